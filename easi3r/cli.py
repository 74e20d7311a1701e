"""The ``easi3r`` command.

    easi3r run FRAMES_OR_VIDEO [--recipe NAME] -o OUT [--checkpoint PATH] [--resume] [key=value ...]
    easi3r eval --dataset NAME --root PATH [--recipe NAME] -o OUT [--sequences a,b] [key=value ...]
    easi3r calibrate (FRAMES --masks GT_DIR | --dataset NAME --root PATH) -o OUT [--recipe NAME] [key=value ...]
    easi3r synth -o OUT [--sequences N] [--frames N] [--objects N] [--motion M] [--texture T] [--size HxW]
    easi3r demo [-o OUT]
    easi3r app [--port 7860] [--host 127.0.0.1] [--work-dir DIR]
    easi3r view OUT [--port 8080] [--host 127.0.0.1] [--max-points-per-frame N] [--min-conf C]
    easi3r plugins | recipes [NAME] | validate RECIPE [key=value ...] | convert SRC.pth DST_DIR

A problem with the user's input is printed as one line (``easi3r: error: ...``) with exit status 2;
nothing is left half-written. ``eval`` exits with status 1 when some sequences failed (their errors are
in the summary it writes).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from easi3r import __version__
from easi3r.errors import ArchitectureError, Easi3RError, one_line
from easi3r.logs import LEVELS, log_to_stderr

OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")  # a recipe override key=value


def _backbone_overrides(args: argparse.Namespace) -> list[str]:
    """``--checkpoint`` and ``--device`` as the recipe overrides they stand for."""
    overrides = []
    if args.checkpoint is not None:
        overrides.append(f"backbone.checkpoint={args.checkpoint}")
    if args.device is not None:
        overrides.append(f"backbone.device={args.device}")
    return overrides


@contextlib.contextmanager
def _naming_recipe(recipe: str) -> Iterator[None]:
    """A checkpoint of the wrong network family: the message names the recipe that asked for the other."""
    try:
        yield
    except ArchitectureError as exc:
        raise ArchitectureError(f"recipe '{recipe}', {exc}") from None


def _run(args: argparse.Namespace) -> int:
    from easi3r import distributed
    from easi3r.api import run
    from easi3r.recipes import load_recipe, validate_recipe

    sources = [item for item in args.items if not OVERRIDE.match(item)]
    overrides = [item for item in args.items if OVERRIDE.match(item)]
    if not sources:
        raise Easi3RError("no frames given: pass a folder, image files or a video before the overrides")
    if args.masks_final and args.masks is None:
        raise Easi3RError("--masks-final needs --masks DIR, the masks to use")
    overrides += _backbone_overrides(args)
    if args.save_intermediates:
        overrides.append("export.save_intermediates=true")
    recipe = load_recipe(args.recipe, overrides)
    validate_recipe(recipe)  # before its device is read: a recipe file may lack any section
    device = str(recipe.backbone.device)
    with distributed.join(device) as ranks, _naming_recipe(args.recipe):
        # torchrun: the ranks share the pairs of this one video
        result = run(
            sources[0] if len(sources) == 1 else sources,
            recipe,
            args.out,
            ranks.overrides(),
            overwrite=args.overwrite,
            resume=args.resume,
            cache_dir=args.cache,
            keep_cache=args.keep_cache,
            ranks=ranks,
            masks=args.masks,
            masks_final=args.masks_final,
        )
    if not ranks.is_main:
        return 0
    masks = result.masks
    summary = f"{len(result.frames)} frames, {len(result.pairs)} {result.unit_name}"
    if masks is not None:
        summary += f", dynamic pixels {100 * masks.masks.float().mean():.1f}%"
    print(f"easi3r: wrote {args.out} ({summary})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from easi3r.eval.runner import evaluate

    overrides = [*args.overrides, *_backbone_overrides(args)]
    sequences = None
    if args.sequences is not None:
        sequences = [name.strip() for name in args.sequences.split(",") if name.strip()]
        if not sequences:
            raise Easi3RError("--sequences is empty: give comma-separated sequence names, or 'all'")
    summary = evaluate(
        args.dataset,
        args.root,
        args.recipe,
        args.out,
        overrides,
        sequences,
        args.mask_convention,
        depth_align=args.depth_align,
        overwrite=args.overwrite,
    )
    scored = len(summary.sequences) - len(summary.failed)
    print(
        f"easi3r: wrote {Path(args.out) / 'summary.md'} ({scored} of {len(summary.sequences)} sequences scored)"
    )
    if summary.failed:
        first = summary.failed[0]
        print(
            f"easi3r: error: {len(summary.failed)} of {len(summary.sequences)} sequences failed "
            f"(first: {first.name}: {first.error})",
            file=sys.stderr,
        )
        return 1
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from easi3r.calibration.calibrate import calibrate
    from easi3r.calibration.sequences import dataset_sequences, folder_sequence
    from easi3r.devices import check_device
    from easi3r.recipes import load_recipe, validate_recipe

    overrides = [*args.overrides, *_backbone_overrides(args)]
    if (args.source is None) == (args.dataset is None):
        raise Easi3RError("give either SOURCE --masks GT_DIR, or --dataset NAME --root DIR")
    if args.source is not None and args.masks is None:
        raise Easi3RError(f"{args.source}: --masks GT_DIR is needed, one binary mask per frame")
    if args.dataset is not None and args.root is None:
        raise Easi3RError(f"--dataset {args.dataset} needs --root, the dataset folder")
    recipe = load_recipe(args.recipe, overrides)
    validate_recipe(recipe)
    check_device(str(recipe.backbone.device))
    if args.source is not None:
        sequences = [folder_sequence(args.source, args.masks, recipe)]
    else:
        names = (
            None if args.sequences is None else [n.strip() for n in args.sequences.split(",") if n.strip()]
        )
        sequences = list(dataset_sequences(args.dataset, args.root, recipe, names))
    result = calibrate(
        sequences,
        recipe,
        args.out,
        recipe_ref=args.recipe,
        beam_width=args.beam,
        depth=args.depth,
        overwrite=args.overwrite,
    )
    print(
        f"easi3r: wrote {args.out} (best single map {result.ranked[0].oriented}; searched formula AUC "
        f"{result.search.report_auc:.3f} on the report half; recipe {Path(args.out) / 'calibrated.yaml'})"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from easi3r.demo import run_demo

    run_demo(Path(args.out), overwrite=args.overwrite)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from easi3r.synth import parse_size, write_synthetic_dataset

    names = write_synthetic_dataset(
        Path(args.out),
        sequences=args.sequences,
        frames=args.frames,
        objects=args.objects,
        motion=args.motion,
        texture=args.texture,
        size=parse_size(args.size),
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(f"easi3r: wrote {len(names)} sequences to {args.out}")
    return 0


def _view(args: argparse.Namespace) -> int:
    from easi3r.viewer import check_address, load_scene_for_viewing, serve

    if args.max_points_per_frame < 1:
        raise Easi3RError(f"--max-points-per-frame must be at least 1, got {args.max_points_per_frame}")
    check_address(args.host, args.port)
    serve(
        load_scene_for_viewing(args.out),
        host=args.host,
        port=args.port,
        max_points_per_frame=args.max_points_per_frame,
        min_conf=args.min_conf,
    )
    return 0


def _app(args: argparse.Namespace) -> int:
    from easi3r.app import serve

    serve(host=args.host, port=args.port, work_dir=args.work_dir)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from easi3r.plugins import describe_plugins

    for plugin in describe_plugins():
        provides = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in plugin["provides"].items())
        print(f"{plugin['name']}  ({plugin['distribution']} {plugin['version']})  {plugin['status']}")
        if provides:
            print(f"    {provides}")
        if args.verbosity == "verbose":
            for folder in plugin["recipe_dirs"]:
                print(f"    recipes: {folder}")
            if plugin["fragments"]:
                print(f"    schema fragments: {', '.join(plugin['fragments'])}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from easi3r.recipes import available_recipes, load_recipe, recipe_description

    if args.reference:
        from easi3r.reference import reference_markdown

        print(reference_markdown(), end="")
        return 0
    if args.name is None:
        for name, path in available_recipes().items():
            print(f"{name:18s} {recipe_description(path)}\n{'':18s} ({path})")
        return 0
    from omegaconf import OmegaConf

    print(OmegaConf.to_yaml(load_recipe(args.name)), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from easi3r.recipes import load_recipe, validate_recipe

    validate_recipe(load_recipe(args.recipe, args.overrides))
    print(f"easi3r: recipe {args.recipe} is valid")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from easi3r.plugins import get_plugin_manager

    written = get_plugin_manager().hook.easi3r_convert_checkpoint(src=Path(args.src), dst=Path(args.dst))
    if written is None:
        raise Easi3RError(f"{args.src}: no installed backbone plug-in converts this checkpoint")
    print(f"easi3r: wrote {args.dst}/config.json and {args.dst}/model.safetensors")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse's errors, in the one line every other error takes (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"easi3r: error: {one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="easi3r", description="Dynamic masks, poses and 4D point clouds from DUSt3R/MonST3R attention."
    )
    parser.add_argument("--version", action="version", version=f"easi3r {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a recipe on frames (a folder, image files or a video)")
    run.add_argument(
        "items",
        nargs="+",
        metavar="SOURCE|key=value",
        help="folder of frames, image files or a video; recipe overrides",
    )
    run.add_argument("--recipe", "-r", default="easi3r_dust3r", help="recipe name or YAML path")
    run.add_argument("--out", "-o", required=True, help="output folder (written only when the run succeeds)")
    run.add_argument("--checkpoint", help="DUSt3R/MonST3R checkpoint (.pth, hub folder or hub id)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="overrides backbone.device")
    run.add_argument("--save-intermediates", action="store_true", help="write intermediates.safetensors")
    run.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder (and a stale run cache)"
    )
    run.add_argument(
        "--resume", action="store_true", help="continue a run that was killed, from its cache (OUT.cache)"
    )
    run.add_argument("--cache", help="run cache folder for streamed pair outputs (default: OUT.cache)")
    run.add_argument("--keep-cache", action="store_true", help="keep the run cache after a successful run")
    run.add_argument(
        "--masks",
        metavar="DIR",
        help="your own masks, one per frame: they replace the pass-1 attention masks",
    )
    run.add_argument(
        "--masks-final", action="store_true", help="with --masks: they also replace the final masks"
    )
    run.set_defaults(func=_run)

    ev = sub.add_parser(
        "eval", help="run a recipe over a benchmark dataset and score it (docs/evaluation.md)"
    )
    ev.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="recipe overrides")
    ev.add_argument(
        "--dataset",
        "-d",
        required=True,
        help="davis, davis16, davis17, tum, dycheck, adt, sintel, bonn, synthetic",
    )
    ev.add_argument("--root", required=True, help="the dataset folder (layouts: docs/evaluation.md)")
    ev.add_argument("--recipe", "-r", default="easi3r_dust3r", help="recipe name or YAML path")
    ev.add_argument("--out", "-o", required=True, help="output folder: one run folder per sequence + summary")
    ev.add_argument(
        "--sequences", help="comma-separated sequence names, or 'all' (default: the standard split)"
    )
    ev.add_argument(
        "--mask-convention",
        choices=["per_frame", "per_sequence"],
        default="per_frame",
        help="average J/F over all frames (reference) or per sequence first (DAVIS benchmark)",
    )
    ev.add_argument(
        "--depth-align",
        choices=["median", "lstsq_scale", "lstsq_scale_shift", "none"],
        default="lstsq_scale_shift",
        help="per-video alignment of the predicted depth to the ground truth",
    )
    ev.add_argument("--checkpoint", help="DUSt3R/MonST3R checkpoint (.pth, hub folder or hub id)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="overrides backbone.device")
    ev.add_argument(
        "--overwrite", action="store_true", help="write into an existing, non-empty output folder"
    )
    ev.set_defaults(func=_eval)

    cal = sub.add_parser(
        "calibrate", help="rank the attention statistics that separate moving objects; search a formula"
    )
    cal.add_argument("source", nargs="?", metavar="SOURCE", help="a folder of frames (with --masks)")
    cal.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="recipe overrides")
    cal.add_argument("--masks", metavar="GT_DIR", help="binary masks of SOURCE, one per frame, same order")
    cal.add_argument("--dataset", "-d", help="or a dataset the evaluation reads (davis, synthetic, ...)")
    cal.add_argument("--root", help="the dataset folder")
    cal.add_argument(
        "--sequences", help="comma-separated sequence names, or 'all' (default: the standard split)"
    )
    cal.add_argument("--recipe", "-r", default="easi3r_dust3r", help="recipe name or YAML path")
    cal.add_argument("--out", "-o", required=True, help="report folder (written only when complete)")
    cal.add_argument("--checkpoint", help="the backbone's checkpoint")
    cal.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="overrides backbone.device")
    cal.add_argument("--beam", type=int, default=4, help="products kept at each step of the formula search")
    cal.add_argument("--depth", type=int, default=4, help="most factors in the searched formula")
    cal.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    cal.set_defaults(func=_calibrate)

    demo = sub.add_parser("demo", help="the whole pipeline on a generated clip with the bundled tiny model")
    demo.add_argument("--out", "-o", default="easi3r-demo", help="output folder")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    demo.set_defaults(func=_demo)

    synth = sub.add_parser(
        "synth", help="write synthetic sequences with exact ground truth (masks, depth, poses, intrinsics)"
    )
    synth.add_argument("--out", "-o", required=True, help="output folder (written only when complete)")
    synth.add_argument("--sequences", type=int, default=8, metavar="N", help="number of sequences")
    synth.add_argument("--frames", type=int, default=10, metavar="N", help="frames per sequence")
    synth.add_argument("--objects", type=int, default=2, metavar="N", help="moving objects per sequence")
    synth.add_argument(
        "--motion",
        choices=["orbit", "forward", "mixed"],
        default="orbit",
        help="camera path; mixed alternates orbit and forward",
    )
    synth.add_argument(
        "--texture",
        choices=["pattern", "plain", "noise"],
        default="pattern",
        help="pattern: distinctive walls; plain: flat colours; noise: fine random cells, objects included",
    )
    synth.add_argument("--size", default="144x256", metavar="HxW", help="frame size in pixels")
    synth.add_argument("--seed", type=int, default=0, help="sequence k uses seed + k")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    synth.set_defaults(func=_synth)

    view = sub.add_parser("view", help="serve a run's 4D result (points, cameras, masks) in the browser")
    view.add_argument("out", metavar="OUT", help="output folder of a run with an aligner")
    view.add_argument("--port", type=int, default=8080, help="the next free one is taken when it is busy")
    view.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    view.add_argument(
        "--max-points-per-frame",
        type=int,
        default=20_000,
        metavar="N",
        help="subsample each frame's static and dynamic points to at most N each",
    )
    view.add_argument(
        "--min-conf",
        type=float,
        metavar="C",
        help="show only points whose raw confidence 1 + exp(x) exceeds C (default: the exporters' 1.1)",
    )
    view.set_defaults(func=_view)

    app = sub.add_parser("app", help="a web page to run recipes on uploaded videos (needs easi3r[app])")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    app.add_argument(
        "--work-dir", type=Path, metavar="DIR", help="the runs' folders (default: a temporary one)"
    )
    app.set_defaults(func=_app)

    sub.add_parser("plugins", help="list installed plug-ins and what they provide").set_defaults(
        func=_plugins
    )

    recipes = sub.add_parser("recipes", help="list recipes, or show one resolved")
    recipes.add_argument("name", nargs="?")
    recipes.add_argument("--reference", action="store_true", help="print the recipe reference (Markdown)")
    recipes.set_defaults(func=_recipes)

    validate = sub.add_parser("validate", help="check a recipe (and overrides) without running it")
    validate.add_argument("recipe")
    validate.add_argument("overrides", nargs="*", default=[], metavar="key=value")
    validate.set_defaults(func=_validate)

    convert = sub.add_parser(
        "convert", help="convert an official .pth checkpoint to config.json + model.safetensors"
    )
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.set_defaults(func=_convert)
    for command in sub.choices.values():  # on each command, so that they may follow it: `run ... -q`
        _add_verbosity(command)
    return parser


def _add_verbosity(command: argparse.ArgumentParser) -> None:
    group = command.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const="verbose",
        default="normal",
        help="log debugging detail too",
    )
    group.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const="quiet",
        help="log only warnings (errors and the final 'easi3r: wrote ...' line are printed still)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # overrides may follow options (``run FRAMES -o OUT refine.k=32``): collect what argparse left over
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if not OVERRIDE.match(item)]
    if unknown or (extra and args.command not in ("run", "validate", "eval", "calibrate")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if args.command == "run":
        args.items += extra
    elif args.command in ("validate", "eval", "calibrate"):
        args.overrides += extra
    if args.command == "calibrate" and args.source is not None and OVERRIDE.match(args.source):
        args.overrides.insert(0, args.source)  # an override, not a frames folder: --dataset gives the frames
        args.source = None
    log_to_stderr(LEVELS[args.verbosity])
    try:
        return args.func(args)
    except Easi3RError as exc:
        print(
            f"easi3r: error: {one_line(exc)}", file=sys.stderr
        )  # a message quoting user text stays one line
        return exc.exit_code
    except KeyboardInterrupt:
        print("easi3r: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
