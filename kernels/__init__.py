"""Triton kernels of adatriton, installed as ``adatriton.kernels``.

One module per op (private ``@triton.jit`` kernels, their config factories and launcher). The pure-PyTorch
references they are tested against are the ``torch`` backend in :mod:`adatriton.ops`.
"""

from .compat import patch_interpreter

# Before any kernel is launched: Triton 3.6's interpreter cannot run the conv kernel's loop without it.
patch_interpreter()
