"""2AFC data: spec strings, on-disk layouts, the bundled ``mini`` set, a streaming loader."""

from robustsim.data.images import load_image
from robustsim.data.triplets import (
    ArrayTriplets,
    FileTriplets,
    TripletDataset,
    iter_batches,
    open_triplets,
    triplet_loader,
)

__all__ = [
    "ArrayTriplets",
    "FileTriplets",
    "TripletDataset",
    "iter_batches",
    "load_image",
    "open_triplets",
    "triplet_loader",
]
