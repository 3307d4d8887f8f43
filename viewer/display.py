"""Is there a screen to open the viewer on (answered without importing dearpygui), and the process's one
dearpygui context and OS window (:func:`open_display` / :func:`release_display`).

The viewer needs a desktop session (X11 or Wayland on Linux; macOS and Windows always have one) and
the ``dearpygui`` package (``pip install 'omnifield[viewer]'``). Headless machines render videos
with ``omnifield render`` instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

HEADLESS_HINT = "render videos headless with `omnifield render RUN --path orbit` instead"


def _x11_socket(display: str) -> Path | None:
    """The local socket of an X display such as ``:99`` or ``:0.0`` (None for remote ``host:N`` displays)."""
    host, _, rest = display.rpartition(":")
    if host not in ("", "unix"):
        return None
    number = rest.split(".")[0]
    if not number.isdigit():
        return None
    return Path("/tmp/.X11-unix") / f"X{number}"


def display_available(environ: dict | None = None, platform: str | None = None) -> tuple[bool, str]:
    """``(True, description)`` when a window can be opened, else ``(False, why not)``.

    Linux and the BSDs need ``$WAYLAND_DISPLAY`` or ``$DISPLAY``; a local X display must have its
    socket in ``/tmp/.X11-unix``. ``environ`` / ``platform`` default to the process's (tests pass their own).
    """
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform.startswith(("win", "darwin")):
        return True, f"desktop ({platform})"
    if env.get("WAYLAND_DISPLAY"):
        return True, f"Wayland display {env['WAYLAND_DISPLAY']}"
    display = env.get("DISPLAY")
    if not display:
        return False, "no display: neither DISPLAY nor WAYLAND_DISPLAY is set"
    socket = _x11_socket(display)
    if socket is not None and not socket.exists():
        return False, f"no X server on DISPLAY={display} ({socket} does not exist)"
    return True, f"X display {display}"


def dearpygui_available() -> tuple[bool, str]:
    """``(True, version)`` when dearpygui can be imported, else ``(False, how to install it)``."""
    if importlib.util.find_spec("dearpygui") is None:
        return False, "the viewer needs dearpygui: pip install 'omnifield[viewer]'"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return True, f"dearpygui {version('dearpygui')}"
    except PackageNotFoundError:
        return True, "dearpygui"


def viewer_unavailable_reason() -> str | None:
    """One line saying why the viewer cannot open here (no display, no dearpygui), or None when it can."""
    ok, why = display_available()
    if not ok:
        return f"{why}; {HEADLESS_HINT}"
    ok, why = dearpygui_available()
    return None if ok else why


# -- the one dearpygui context and OS window of the process ----------------------------------------------
_DISPLAY = {"open": False}


def open_display(title: str, width: int, height: int, vsync: bool) -> bool:
    """Create dearpygui's context and viewport unless one is open; True when created now.

    dearpygui 2.2+ does not close the OS window in ``destroy_context`` (hoffstadt/DearPyGui#2662) and
    a context created after one was destroyed can crash in its first frames, so Viewers share one
    context: each deletes its own items on close. It is destroyed when the user closes the window,
    by :func:`release_display`, or at exit.
    """
    import dearpygui.dearpygui as dpg

    if _DISPLAY["open"] and dpg.is_dearpygui_running():
        return False
    release_display()
    dpg.create_context()
    dpg.configure_app(manual_callback_management=True)
    dpg.create_viewport(title=title, width=width, height=height, vsync=vsync)
    dpg.setup_dearpygui()
    dpg.show_viewport()
    if not _DISPLAY.get("atexit"):
        import atexit

        atexit.register(release_display)
        _DISPLAY["atexit"] = True
    _DISPLAY["open"] = True
    return True


def release_display() -> None:
    """Destroy dearpygui's context (and with it the window) if one is open."""
    if _DISPLAY["open"]:
        import dearpygui.dearpygui as dpg

        _DISPLAY["open"] = False
        dpg.destroy_context()


__all__ = ["display_available", "dearpygui_available", "viewer_unavailable_reason", "open_display",
           "release_display", "HEADLESS_HINT"]
