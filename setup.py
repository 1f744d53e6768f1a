"""Package for the MSD feature pipeline and the batch recommendation job.

Installed locally with ``pip install -e .`` and shipped to Dataflow workers with
``--setup_file ./setup.py``. Versions of the direct dependencies are pinned here;
``constraints.txt`` pins the whole resolved set (``pip check`` clean).
"""
import setuptools

INSTALL_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-transform==1.21.0",
    "tfx-bsl==1.21.0",
    "h5py==3.14.0",
    "numpy==2.4.6",
    "pyarrow==25.0.1",
    "pyyaml==6.0.3",
    "tqdm==4.70.1",
    "scipy==1.17.1",
    "implicit==0.7.3",
]

EXTRAS_REQUIRE = {
    "test": ["pytest==9.2.0", "hypothesis==6.170.15", "gcp-storage-emulator==2026.7.19"],
    "local": ["duckdb==2.0.0", "sqlglot==30.30.0", "matplotlib==3.11.2"],
    "bench": ["faiss-cpu==1.15.1"],
}

setuptools.setup(
    name="msd-recommender",
    version="0.1.0",
    description="Beam/Dataflow timbre features and batch recommendations over the Million Song Dataset",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["pipelines*", "transforms*", "recommend*", "msd*"]),
    package_data={"recommend": ["queries/*.sql"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
