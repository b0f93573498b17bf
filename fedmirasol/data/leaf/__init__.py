"""LEAF (Caldas et al., "LEAF: A Benchmark for Federated Settings"): its JSON format read by byte
offsets per user, its tasks, its users as clients, and its Synthetic(alpha, beta) generator."""

from fedmirasol.data.leaf.federation import LeafFederation, find_root
from fedmirasol.data.leaf.index import FileIndex, LeafFormatError, index_file
from fedmirasol.data.leaf.tasks import IMAGE_TASKS, TASK_SPECS, TASKS, LeafTask
from fedmirasol.data.leaf.writer import write_leaf_dataset, write_leaf_file

__all__ = [
    "IMAGE_TASKS", "TASKS", "TASK_SPECS", "FileIndex", "LeafFederation", "LeafFormatError",
    "LeafTask", "find_root", "index_file", "write_leaf_dataset", "write_leaf_file",
]
