"""Kernels of omnifield: public ops (:mod:`omnifield.cuda.ops`), backend selection
(:mod:`omnifield.cuda.backend`) and the pure-PyTorch reference of every op
(:mod:`omnifield.cuda.reference`). Importing this package builds and loads nothing."""
