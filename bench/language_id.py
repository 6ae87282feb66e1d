"""Caption language ID: py3langid (ours) against lingua-language-detector (the peer), one run.

Measures throughput on 10k distinct captions, and for the rule "reject when a non-allowed
language wins with p >= min_confidence": the false-reject rate on the bundled English
captions (digits templates, textiles, generated shapes scenes) and the reject rate on a
small hand-written set of non-English captions, per min_confidence. The peer is skipped
when lingua is not installed (it is not a project dependency: a 96 MB wheel).

Run: `.venv/bin/python -m bench.language_id`; writes reports/bench/language_id.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tasks.curation.language import NO_LANGUAGE, _identifier, detect_languages
from tasks.params import DigitsSource
from tasks.sources.digits import CLASS_NAMES
from tasks.sources.shape_scenes import sample_scene
from tasks.sources.textiles import CAPTIONS

OUT = Path("reports/bench/language_id.json")
THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.9)
FOREIGN = [
    "ein kleiner roter Kreis oben links",
    "eine handgeschriebene Ziffer sieben",
    "ein Foto von gewebtem Stoff ohne Fehler",
    "un petit cercle rouge en haut à gauche",
    "une photo d'un tissu avec un défaut",
    "le chiffre sept écrit à la main",
    "un pequeño círculo rojo arriba a la izquierda",
    "una foto de tela con un defecto local",
    "el número siete escrito a mano",
    "un piccolo cerchio rosso in alto a sinistra",
    "una foto di un tessuto con un difetto",
    "een kleine rode cirkel linksboven",
    "een foto van geweven stof zonder fouten",
    "um pequeno círculo vermelho no canto superior esquerdo",
    "uma foto de tecido com um defeito",
    "mała czerwona kropka w lewym górnym rogu",
    "маленький красный круг в левом верхнем углу",
    "左上角的一个红色小圆圈",
    "左上に小さな赤い円",
    "küçük kırmızı bir daire sol üstte",
]


def english_captions(num_scenes: int) -> dict[str, list[str]]:
    digits = DigitsSource()
    templates = digits.train_templates + digits.eval_templates
    rng = np.random.default_rng(0)
    return {
        "digits": [t.format(name) for t in templates for name in CLASS_NAMES],
        "textiles": [c for group in CAPTIONS.values() for c in group],
        "shapes": sorted({sample_scene(rng).caption() for _ in range(num_scenes)}),
    }


def _py3langid() -> Callable[[str], tuple[str, float]]:
    identifier = _identifier()
    return lambda text: tuple(identifier.classify(text))


def _lingua() -> Callable[[str], tuple[str, float]] | None:
    try:
        from lingua import LanguageDetectorBuilder
    except ImportError:
        return None
    detector = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()

    def classify(text: str) -> tuple[str, float]:
        values = detector.compute_language_confidence_values(text)
        if not values:
            return NO_LANGUAGE, 0.0
        top = values[0]
        return top.language.iso_code_639_1.name.lower(), float(top.value)

    return classify


def reject_rate(results: list[tuple[str, float]], threshold: float) -> float:
    rejected = [code not in ("en", NO_LANGUAGE) and p >= threshold for code, p in results]
    return float(np.mean(rejected)) if rejected else 0.0


def main() -> None:
    captions = english_captions(30_000)
    english = [c for group in captions.values() for c in group]
    speed_set = captions["shapes"][:10_000]
    detectors = {"py3langid": _py3langid(), "lingua": _lingua()}
    report: dict = {
        "english_captions": {k: len(v) for k, v in captions.items()},
        "foreign_captions": len(FOREIGN),
        "detectors": {},
    }
    for name, classify in detectors.items():
        if classify is None:
            print(f"{name}: not installed, skipped")
            continue
        start = time.perf_counter()
        for text in speed_set:
            classify(text)
        per_s = len(speed_set) / (time.perf_counter() - start)
        per_source = {src: [classify(c) for c in group] for src, group in captions.items()}
        on_english = [r for group in per_source.values() for r in group]
        on_foreign = [classify(c) for c in FOREIGN]
        report["detectors"][name] = {
            "captions_per_s": round(per_s),
            "false_reject": {
                str(t): {
                    "all": reject_rate(on_english, t),
                    **{src: reject_rate(r, t) for src, r in per_source.items()},
                }
                for t in THRESHOLDS
            },
            "foreign_rejected": {str(t): reject_rate(on_foreign, t) for t in THRESHOLDS},
        }
    start = time.perf_counter()
    detect_languages(english)
    report["detect_languages_s_for_english_set"] = round(time.perf_counter() - start, 3)
    ours = report["detectors"]["py3langid"]["captions_per_s"]
    if "lingua" in report["detectors"]:
        report["speed_ratio_py3langid_over_lingua"] = round(
            ours / report["detectors"]["lingua"]["captions_per_s"], 1
        )
    print(f"{len(english)} English captions, {len(FOREIGN)} foreign; speed on 10k distinct:")
    for name, row in report["detectors"].items():
        print(f"{name:10s} {row['captions_per_s']:>8} captions/s")
        for t in THRESHOLDS:
            fr = row["false_reject"][str(t)]
            print(f"   min_conf {t}: English false-reject {fr['all']:.4f} "
                  f"(digits {fr['digits']:.3f}, textiles {fr['textiles']:.3f}, "
                  f"shapes {fr['shapes']:.4f}); foreign rejected "
                  f"{row['foreign_rejected'][str(t)]:.2f}")  # fmt: skip
    if "speed_ratio_py3langid_over_lingua" in report:
        print(f"py3langid / lingua speed: {report['speed_ratio_py3langid_over_lingua']}x")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
