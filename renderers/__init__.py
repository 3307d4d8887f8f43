"""Renderers: rays, packed samples, occupancy grid, samplers and volume compositing.

Public: :func:`camera_rays`, :func:`image_rays` (``rays``), :class:`OccupancyGrid` (``occupancy``),
:func:`composite` (``volume``), :func:`stratified_edges`, :func:`pdf_edges`, :func:`edges_to_packed`
(``sampling``) and the core types in ``types``. Import the submodules directly.
"""
