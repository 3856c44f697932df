"""Drop-in modules: torch layers that also run on multi-resolution maps, and :func:`swap_modules`."""
