"""omnifield: one toolkit for neural 3D scenes.

The repository root is the ``omnifield`` package (setuptools package-dir mapping), so the folders
import as ``omnifield.datasets``, ``omnifield.cuda`` and never shadow NVIDIA's ``cuda`` or
HuggingFace's ``datasets``. Importing this package has no side effects.
"""

__version__ = "0.1.0"
