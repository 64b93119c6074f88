"""embedding-export: export user embeddings as twml DataRecords with Apache Beam.

The IDL in the top-level ``thrift/`` directory ships inside the wheel and sdist as
``twml/idl/*.thrift`` (``thrift/`` is data, not a package: a package named ``thrift`` would
shadow Apache Thrift). This file is also what Dataflow workers install with --setup_file.
"""
import re
from pathlib import Path

from setuptools import setup

# The one version string lives in twml/_version.py (read as text: setup.py runs before the
# dependencies that importing twml would need are installed).
VERSION = re.search(r'^__version__ = "([^"]+)"$', (Path(__file__).parent / "twml" / "_version.py").read_text(),
                    re.M).group(1)
# What the job's workers need is install_requires; what only a person at a terminal uses is an extra.
TOOLS = ["rich>=13", "matplotlib>=3.8"]   # progress bar and tables (plain text without), inspect --plot
TEST = ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3"]
BENCH = ["psutil>=5.9"]                   # benchmarks/: machine facts in the JSON

setup(
    name="embedding-export",
    version=VERSION,
    description="Export user embeddings in Twitter's DataRecord format with Apache Beam",
    python_requires=">=3.11",   # typing.Self
    packages=["twml", "twml.io", "twml.layers", "twml.idl", "transforms", "transforms.inputs", "pipeline",
              "pipeline.tools", "pipeline.demo"],
    package_dir={"twml.idl": "thrift"},
    package_data={"twml.idl": ["*.thrift"]},
    include_package_data=True,
    install_requires=[
        "apache-beam>=2.70,<3",
        "tensorflow-cpu>=2.18,<2.22",
        "thriftpy2>=0.5,<0.8",
        "pyarrow>=17",
        "numpy>=1.26,<3",
        "protobuf>=5,<7",
        "google-crc32c>=1.6",
        "mmh3>=4.1",
        "numba>=0.60",      # the batch crc32c kernel (twml/io/crc32c_batch.py); optional at run time
        "llvmlite>=0.43",
        "pydantic>=2.6,<3",
        "pyyaml>=6",
    ],
    extras_require={
        "tools": TOOLS,
        "bench": BENCH,
        "test": TEST,
        # Beam's hdfs:// file system talks WebHDFS through this client (what apache-beam[hadoop] adds).
        "hdfs": ["hdfs>=2.7,<3"],
    },
    entry_points={"console_scripts": ["embedding-export=pipeline.cli:main"]},
)
