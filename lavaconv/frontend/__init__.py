"""Model front-end: a model file -> canonical, verified torch.fx graph (design.md sec. 1).

``load`` reads the file formats, ``canon`` exports, rewrites and verifies, ``passes`` holds the
graph rewrites, one small function each.
"""

from lavaconv.frontend.canon import canonicalize
from lavaconv.frontend.load import LoadedModel, load_model

__all__ = ["LoadedModel", "canonicalize", "load_model"]
