"""`shipyard quickstart`: the whole loop on the bundled MNIST sample (the steps are in
`shipyard.quickstart`)."""

from __future__ import annotations

from typing import Annotated

import typer

from shipyard.cli._common import JsonOpt, emit_json, reporting, settings


def quickstart(
    name: Annotated[str, typer.Option(help="The model name to use.")] = "digits",
    epochs: Annotated[int, typer.Option(help="Training epochs for the first model.")] = 5,
    shift: Annotated[float, typer.Option(help="How far the digits rotate when the traffic shifts, degrees.")] = 45.0,
    as_json: JsonOpt = False,
) -> None:
    """The whole loop on the bundled MNIST sample in a few minutes: train → optimize → register →
    serve in the background → traffic → the traffic shifts → drift alarm → labels → retrain →
    canary → promote → an HTML report and a summary table. Works in SHIPYARD_HOME and leaves the
    runs, versions, history and report there; leaves no process running; exit 1 if a stage fails."""
    with reporting(as_json):
        from shipyard import quickstart as qs

        facts = qs.run(settings(), name=name, epochs=epochs, shift_degrees=shift)
        if as_json:
            emit_json(qs.summary(facts))
