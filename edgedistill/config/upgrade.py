"""Recipes of earlier releases: the raw YAML mapping is brought to the current form before it is validated.

A recipe may say which recipe format it is written in (`version:`, Recipe.version; leaving it out means the current
one). UPGRADES lists, oldest first, one step per earlier form: the step recognises its form (by `version:`, or by
keys only that form had) and returns the sections it rewrote. Every rewritten section is printed in one warning, in
the current form, ready to paste; a form that cannot be mapped safely is refused with that replacement instead. A
`version:` newer than this edgedistill reads is refused with a line saying to upgrade it.

Only the raw mapping changes here, so the schema (`edgedistill recipe-schema`) shows the current form alone.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from typing import Any

import yaml

from ..errors import BadInput
from ..version import __version__
from .schema import Recipe

log = logging.getLogger("edgedistill")

CURRENT = Recipe.model_fields["version"].default  # the format this release reads and writes


class Refused(Exception):
    """An earlier form this step cannot map safely: the message says why and gives the replacement."""


Section = tuple[tuple[str, ...], Any]  # a rewritten section: its key path and its new value
Step = Callable[[dict[str, Any], bool | None], list[Section]]

# ----------------------------------------------------------------------------------------------------- format 1

FORMAT1_LOSSES = ("kd", "feature", "relation")  # LossSpec's weights, each 1.0 when left out
FORMAT1_PARAMS = {"temperature": "kd", "relation_terms": "relation"}  # LossSpec's parameters -> the loss they now sit in


def loss_beside_weights(data: dict[str, Any], declared_old: bool | None) -> list[Section]:
    """Format 1: `distill.loss` with its parameters beside the weights, as edgedistill 0.1.0 accepted it from the
    first commit (d5e8eb8) to 9dd7628, in edgedistill/recipe.py's LossSpec:

        loss: {kd: 1.0, temperature: 1.0, feature: 1.0, relation: 1.0, relation_terms: {distance: 1.0, angle: 2.0}}

    afd8b63 (#11, config/schema.py) made the loss a mapping of registered loss name -> weight or {weight: W, ...its
    parameters}: `temperature` moved into kd, `relation_terms` into relation. LossSpec also turned a loss left out on
    at weight 1.0, where the current form leaves it off, so those are written out. A temperature left out stays out:
    the current default 1.0 is what format 1 read from 73107d5 on (d5e8eb8 alone read 4.0).

    Recognised by `temperature` or `relation_terms` in the loss, or by `version: 1` (`declared_old`). Refused, with
    the replacement, where it is mixed with the current form (a loss already given as a mapping, a loss name format 1
    did not have, or `version: 2` declared): whether a loss left out is on or off cannot be told then."""
    distill = data.get("distill")
    loss = distill.get("loss") if isinstance(distill, dict) else None
    if not isinstance(loss, dict):
        return []
    flat = [key for key in FORMAT1_PARAMS if key in loss]
    if not flat and not declared_old:
        return []
    mixed = [
        f"{name} is already a mapping" if name in FORMAT1_LOSSES else f"{name!r} is not a format 1 loss"
        for name, entry in loss.items()
        if (name in FORMAT1_LOSSES and isinstance(entry, dict)) or (name not in FORMAT1_LOSSES and name not in FORMAT1_PARAMS)
    ]
    if declared_old is False:
        mixed.insert(0, f"the recipe says version: {data.get('version')}")
    terms = loss.get("relation_terms")
    if terms is not None and not isinstance(terms, dict):
        raise Refused(
            f"distill.loss.relation_terms: {terms!r} is not a mapping of the relation terms' weights; write them in the relation "
            "loss: under distill, `loss: {relation: {weight: 1.0, distance: 1.0, angle: 2.0, similarity: 0.0}, ...}`"
        )
    upgraded: dict[str, Any] = {}
    for name in [*FORMAT1_LOSSES, *(n for n in loss if n not in FORMAT1_LOSSES and n not in FORMAT1_PARAMS)]:
        if name not in loss and declared_old is False:
            continue  # a recipe that says it is of the current form: a loss it leaves out is off
        entry = loss.get(name, 1.0)
        params = {key: loss[key] for key, owner in FORMAT1_PARAMS.items() if owner == name and key in loss}
        if name == "relation" and "relation_terms" in params:
            params = dict(params.pop("relation_terms") or {})
        if params and isinstance(entry, dict):  # mixed (refused below): the mapping's own values win
            entry = {**entry, **{key: value for key, value in params.items() if key not in entry}}
        elif params:
            entry = {"weight": entry, **params}
        upgraded[name] = entry
    if mixed:
        raise Refused(
            f"distill.loss mixes recipe format 1 (temperature or relation_terms beside the weights) with the current form "
            f"({'; '.join(mixed)}), so which losses are on cannot be told; check and paste the current form: "
            f"{_paste(('distill', 'loss'), upgraded)}"
        )
    return [(("distill", "loss"), upgraded)]


# ------------------------------------------------------------------------------------------------- the table

UPGRADES: list[tuple[int, Step]] = [
    (2, loss_beside_weights),  # (the format the step upgrades to, the step); oldest first
]


def upgrade_recipe(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The raw recipe mapping in the current form: earlier forms rewritten with one warning, newer ones refused.
    `data` itself is left as it was; a copy is returned when anything changed."""
    declared = data.get("version")
    if declared is not None:
        if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
            raise BadInput(
                f"{source}: version: {declared!r} is not a recipe format; this edgedistill reads formats 1 to {CURRENT} "
                f"(leave version out for the current one, {CURRENT})"
            )
        if declared > CURRENT:
            raise BadInput(
                f"{source}: version: {declared}: the recipe is written for a newer edgedistill (recipe format {declared}; "
                f"edgedistill {__version__} reads formats up to {CURRENT}); upgrade edgedistill: pip install --upgrade edgedistill"
            )
        if declared == CURRENT and not _old_keys(data):
            return data
    elif not _old_keys(data):
        return data
    data = copy.deepcopy(data)
    sections: list[Section] = []
    earliest = None  # the earliest format found
    for to, step in UPGRADES:
        try:
            changed = step(data, None if declared is None else declared < to)
        except Refused as exc:
            raise BadInput(f"{source}: {exc}") from None
        for path, value in changed:
            _put(data, path, value)
        sections += changed
        earliest = earliest or (to - 1 if changed else None)
    if declared is not None:
        data["version"] = CURRENT  # read as the current form from here on (a second pass finds nothing to do)
    if sections:
        log.warning(
            "%s: %s: written in the form of an earlier release (recipe format %d), read as the current one (format %d); to drop this "
            "warning paste %s, and at the top `version: %d`",
            source,
            ", ".join(".".join(path) for path, _ in sections),
            earliest,
            CURRENT,
            ", ".join(_paste(path, value) for path, value in sections),
            CURRENT,
        )
    return data


MOVED_KEYS = {"distill.loss.temperature": "distill.loss.kd.temperature", "distill.loss.relation_terms": "distill.loss.relation"}


def check_override(item: str) -> None:
    """An --set of a key an earlier format had (`distill.loss.temperature=4`) is refused with the current spelling
    (`--set distill.loss.kd.temperature=4`): overrides are applied after the file's upgrade, in the current form."""
    key, _, raw = item.partition("=")
    for old, new in MOVED_KEYS.items():
        if key != old and not key.startswith(old + "."):
            continue
        rest = key[len(old) :]
        fix = f"--set {new}{rest}={raw}"
        if not rest and old.endswith(".relation_terms"):  # the whole mapping of terms: one option per term
            try:
                terms = yaml.safe_load(raw)
            except yaml.YAMLError:
                terms = None
            names = terms.items() if isinstance(terms, dict) and terms else [("distance", 1.0), ("angle", 2.0)]
            fix = " ".join(f"--set {new}.{name}={json.dumps(value)}" for name, value in names)
        whole = ".TERM" if not rest and old.endswith(".relation_terms") else ""
        raise BadInput(f"--set {item}: {key} is {new}{rest or whole} since recipe format 2; write {fix}")


def _old_keys(data: dict[str, Any]) -> bool:
    """Whether a recipe that does not say it is of an earlier format still has keys only earlier forms had."""
    distill = data.get("distill")
    loss = distill.get("loss") if isinstance(distill, dict) else None
    return isinstance(loss, dict) and any(key in loss for key in FORMAT1_PARAMS)


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _paste(path: tuple[str, ...], value: Any) -> str:
    """A rewritten section as one line of YAML to paste: under distill, `loss: {kd: {weight: 1.0, ...}, ...}`."""
    text = yaml.safe_dump({path[-1]: value}, default_flow_style=True, sort_keys=False, width=10**6).strip()
    text = text[1:-1] if text.startswith("{") and text.endswith("}") else text  # {loss: {...}} -> loss: {...}
    under = f"under {': '.join(path[:-1])}, " if len(path) > 1 else ""
    return f"{under}`{text}`"
