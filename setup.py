"""Builds the C++ CPU kernels (csrc/) as ``mosa_kernels._C``.

The extension is compiled against pybind11 only: tensors cross the boundary as raw data
pointers plus shapes, so torch is not needed at build time.
"""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

cpu_kernels = Pybind11Extension(
    "mosa_kernels._C",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    # no-trapping-math: nothing reads the FP exception flags, and without it GCC keeps float
    # compares inside vectorised loops as branches. fp-contract=off: no fused a * b + c, whose
    # rounding would make results depend on the CPU (the torch spec rounds each operation).
    extra_compile_args=["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[cpu_kernels], cmdclass={"build_ext": build_ext})
