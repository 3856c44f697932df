"""Triton kernels of adatriton, installed as ``adatriton.kernels``.

One module per op (private ``@triton.jit`` kernels, their config factories and launcher). The pure-PyTorch
references they are tested against are the ``torch`` backend in :mod:`adatriton.ops`.
"""
