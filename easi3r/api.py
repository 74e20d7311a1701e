"""The Python API: ``easi3r.run`` is the ``easi3r run`` command without argument parsing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from easi3r.frames import load_frames
from easi3r.outputs import staged_output_dir
from easi3r.pipeline import RunResult
from easi3r.pipeline import run as run_pipeline
from easi3r.plugins import get_plugin_manager
from easi3r.recipes import load_recipe, resolved_recipe_yaml, validate_recipe


def run(
    source: str | Path | Sequence[str | Path],
    recipe: str | Path = "easi3r_dust3r",
    out_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    overwrite: bool = False,
) -> RunResult:
    """Load frames from ``source`` (folder, file list or video), run the recipe and, if ``out_dir`` is
    given, write every output there (the folder appears only when the run succeeded)."""
    cfg = load_recipe(str(recipe), overrides)
    validate_recipe(cfg)
    f = cfg.frames
    frames = load_frames(
        source, size=f.size, crop=f.crop, square_ok=f.square_ok, stride=f.stride, max_frames=f.max_frames
    )
    if out_dir is None:
        return run_pipeline(cfg, frames)
    with staged_output_dir(out_dir, overwrite=overwrite) as staging:
        result = run_pipeline(cfg, frames)
        write_outputs(result, staging)
    get_plugin_manager().hook.easi3r_run_end(result=result, out_dir=Path(out_dir))
    return result


def write_outputs(result: RunResult, out_dir: Path) -> list[Path]:
    """``run.yaml``, the pair predictions, the intermediates if asked, and every exporter's files."""
    from easi3r.intermediates import intermediates
    from easi3r.plugins import registry
    from easi3r.writers import save_safetensors

    written = [out_dir / "run.yaml"]
    written[0].write_text(resolved_recipe_yaml(result.recipe))
    pred = result.final_pass.outputs.predictions
    if pred is not None:
        path = out_dir / "pair_predictions.safetensors"
        save_safetensors(
            path,
            {
                "pairs": result.pairs,
                "pts3d_1": pred.pts3d_1,
                "conf_1": pred.conf_1,
                "pts3d_2": pred.pts3d_2,
                "conf_2": pred.conf_2,
            },
        )
        written.append(path)
    if result.recipe.export.save_intermediates:
        tensors, metadata = intermediates(result)
        path = out_dir / "intermediates.safetensors"
        save_safetensors(path, tensors, metadata)
        written.append(path)
    for name in result.recipe.export.exporters:
        written.extend(registry("exporters").create({"name": name}, key="export.exporters")(result, out_dir))
    return written
