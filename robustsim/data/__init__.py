"""2AFC data: spec strings, on-disk layouts, the bundled ``mini`` set, a streaming loader."""

from robustsim.data.images import load_image
from robustsim.data.specs import (
    open_images,
    open_retrieval,
    open_triplets,
    register_retrieval_spec,
    register_triplet_spec,
)
from robustsim.data.triplets import (
    ArrayTriplets,
    FileTriplets,
    TripletDataset,
    iter_batches,
    triplet_loader,
)

__all__ = [
    "ArrayTriplets",
    "FileTriplets",
    "TripletDataset",
    "iter_batches",
    "load_image",
    "open_images",
    "open_retrieval",
    "open_triplets",
    "register_retrieval_spec",
    "register_triplet_spec",
    "triplet_loader",
]
