"""Manifests (CSV, Parquet, text lists of image paths): what a broken header gets."""

from __future__ import annotations

import pytest


def test_a_csv_manifest_with_two_path_columns_is_an_error(tmp_path):
    from masksmith.inference.manifest import read_manifest
    from masksmith.errors import DataError

    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label,path\na.png,x,b.png\n")
    with pytest.raises(DataError, match=r"list\.csv: the header has 2 'path' columns; keep one"):
        read_manifest(manifest)


def test_a_parquet_manifest_with_two_path_columns_is_an_error(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    from masksmith.inference.manifest import read_manifest
    from masksmith.errors import DataError

    manifest = tmp_path / "list.parquet"
    parquet.write_table(pyarrow.Table.from_arrays([pyarrow.array(["a.png"]), pyarrow.array(["b.png"])],
                                                  names=["path", "path"]), manifest)
    with pytest.raises(DataError, match=r"list\.parquet: 2 columns are named 'path'; keep one"):
        read_manifest(manifest)
