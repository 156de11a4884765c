"""Attach PNG figures to Dagster metadata (inline in the UI) and keep a copy in storage."""
from __future__ import annotations

import base64

import dagster as dg

from .core import storage as st


def png_metadata(png: bytes, uri: str, alt: str) -> dict:
    with st.atomic_open(uri, "wb") as f:
        f.write(png)
    b64 = base64.b64encode(png).decode()
    return {f"{alt} (plot)": dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{b64})"),
            f"{alt} (file)": dg.MetadataValue.path(uri)}
