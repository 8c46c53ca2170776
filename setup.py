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
    extra_compile_args=["-O3", "-fopenmp"],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[cpu_kernels], cmdclass={"build_ext": build_ext})
