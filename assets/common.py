"""Small helpers shared by the asset modules."""

from __future__ import annotations

from dagster import AssetExecutionContext, AssetKey


def upstream_metadata(context: AssetExecutionContext, asset: str) -> dict:
    """Metadata values of the latest materialisation of ``asset``.

    Large artefacts (models) are passed between stages as URIs in metadata,
    never through the IO manager.
    """
    event = context.instance.get_latest_materialization_event(AssetKey(asset))
    if event is None or event.asset_materialization is None:
        raise RuntimeError(f"{asset} has not been materialised yet; materialise it first")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def upstream_uri(context: AssetExecutionContext, asset: str) -> str:
    """The ``uri`` metadata entry of the latest materialisation of ``asset``."""
    meta = upstream_metadata(context, asset)
    if "uri" not in meta:
        raise RuntimeError(f"latest materialisation of {asset} has no 'uri' metadata")
    return str(meta["uri"])
