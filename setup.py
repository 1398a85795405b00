"""Installs the Detectron2 extension (d2ext), the MONAI bundles (monai_bundles) and the shared
package (sslseg: metrics, data root, converters, synthetic data)."""
from setuptools import find_packages, setup

setup(
    name="sslseg",
    version="0.1.0",
    description="Label-efficient medical image segmentation methods for Detectron2 and MONAI",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["d2ext", "d2ext.*", "monai_bundles", "monai_bundles.*",
                                    "sslseg", "sslseg.*"]),
    package_data={"monai_bundles": ["*/configs/*.json", "*/configs/*.conf", "*/docs/*.md",
                                    "common/*.json"]},
    include_package_data=True,
    entry_points={
        "console_scripts": [
            "sslseg-convert=sslseg.datasets.cli:main",
            "sslseg-coco-eval=sslseg.metrics.cli:main",
        ]
    },
)
