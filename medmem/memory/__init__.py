"""External memory: slot store with ATMA updates, kNN search, prototype summarisation."""

from medmem.memory.knn import knn_search
from medmem.memory.store import ExternalMemory

__all__ = ["ExternalMemory", "knn_search"]
