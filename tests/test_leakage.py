import csv
import datetime as dt
import gzip
import json
import random
import re
import shutil
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from beam_pipeline import mimic, sample
from beam_pipeline.fileio.tfrecord import parse_example, read_records
from beam_pipeline.pipeline import build_pipeline, resolve_inputs, resolve_text
from beam_pipeline.run import in_run_folder, parse, run
from beam_pipeline.transforms.leakage import FilterLeakage, load_rules, redact, rules_document
from beam_pipeline.transforms.notes import render_note
from beam_pipeline.transforms.records import Record
from beam_pipeline.transforms.snapshot import Snapshot
from conftest import ONE_WORKER, OFFLINE_TEXT, published, write_table

RULES = load_rules()
TOKEN = "[REDACTED]"

# One leaking phrase for every pattern of the original pipeline's lists (review sections 5.2 and 5.3), plus the
# abbreviations, colloquialisms and misspellings of ED chief complaints the issue names.
ORIGINAL_PER_FINDING = [
    "bibasilar atelectasis", "collapsed lung", "volume loss", "subsegmental collapse", "linear opacity",
    "cardiomegaly", "enlarged heart", "cardiac enlargement", "heart size", "cardiac silhouette", "CTR >",
    "cardiothoracic ratio",
    "consolidation", "airspace opacity", "air space opacities", "alveolar infiltrates", "lobar pneumonia",
    "dense opacity",
    "edema", "pulmonary edema", "vascular congestion", "kerley B lines", "interstitial markings", "fluid overload",
    "CHF", "congestive heart",
    "effusion", "pleural fluid", "costophrenic angle", "hemothorax", "hydrothorax", "blunted costophrenic",
    "meniscus sign", "layering fluid",
    "pneumonia", "infectious process", "infiltrates", "airspace disease", "focal opacity", "bronchopneumonia",
    "multilobar", "ARDS",
    "pneumothorax", "collapsed lung", "air in pleural", "tension pneumothorax", "visceral pleural line",
    "deep sulcus",
]
ORIGINAL_RADIOLOGY_TERMS = [
    "chest x-ray", "chest xray", "chest radiograph", "chest film", "chest cxr", "PA and lateral", "portable chest",
    "portable cxr", "imaging shows", "imaging reveals", "imaging demonstrates", "radiologic findings",
    "radiology report", "radiology impression", "increased opacity", "decreased density", "increased lucency",
    "ground-glass", "ground glass", "reticular", "nodular", "miliary", "hilar", "mediastinal", "parenchymal",
    "interstitial", "radiograph normal", "radiographs clear", "radiograph unremarkable", "comparison with prior",
    "comparison to prior", "interval change",
]
ORIGINAL_AGGRESSIVE = [
    "imaging", "scan", "CT", "MRI", "ultrasound", "echo", "consistent with", "suggestive of", "concerning for",
    "evidence of", "no evidence", "ruled out", "cannot exclude", "differential includes", "likely represents",
    "compatible with",
]
ED_SHORTHAND = [
    "PNA", "CHF", "PTX", "fluid on lungs", "fluid on the lungs", "abnormal CXR", "sent in for x-ray findings",
    "sent for abnormal CT", "pnuemonia", "atelactasis", "R RIB FX", "rib fracture", "lung mass", "pulmonary nodule",
    "widened mediastinum", "pleural thickening", "s/p thoracentesis", "intubated", "PICC line", "chest tube",
    "no acute cardiopulmonary process", "normal CXR", "opacities", "hazy opacity", "enlarged cardiomediastinum",
    "heart failure exacerbation", "r/o pna",
]


def leak(phrase: str) -> str:
    return f"Chief complaint: Dyspnea, {phrase}, cough. Pain: 7/10. Triage vitals: temperature 98.4 °F."


@pytest.mark.parametrize("phrase", ORIGINAL_PER_FINDING + ORIGINAL_RADIOLOGY_TERMS + ORIGINAL_AGGRESSIVE + ED_SHORTHAND)
def test_every_leaking_phrase_is_redacted_and_nothing_else(phrase):
    filtered, hits = redact(leak(phrase), RULES, TOKEN)
    assert hits and TOKEN in filtered
    core = re.sub(r"[^a-z]", "", phrase.lower())
    assert core not in re.sub(r"[^a-z]", "", filtered.replace(TOKEN, " ").lower().replace("dyspnea", "")
                              .replace("cough", "").replace("pain", "").replace("chiefcomplaint", ""))
    assert filtered.startswith("Chief complaint: Dyspnea, ") and filtered.endswith(
        ", cough. Pain: 7/10. Triage vitals: temperature 98.4 °F.")  # only the span goes; numbers survive


@pytest.mark.parametrize("text", [
    "Chief complaint: increased activity after injection.",  # "ct" inside words (the original's substring bug)
    "Chief complaint: echolalia, new onset.",
    "Chief complaint: DYSPNEA, LE EDEMA.",  # leg swelling is an examination finding, not pulmonary edema
    "Chief complaint: bilateral leg edema, ankle edema, pedal edema.",
    "Chief complaint: syncope/collapse, s/p Fall, chest pain, SOB, abd pain, transfer.",
    "Chief complaint: Weakness, Abnormal labs. Triage vitals: temperature 98.4 °F, SpO2 94%, "
    "blood pressure 118/65 mmHg.",
    "Home medications: Pneumovax, aspirin, atorvastatin. Medications given in the ED so far: Nitroglyce 100mg/250mL "
    "250mL BTL, CefTRIAXone, Albuterol 0.083% Neb Soln, Morphine Sulfat 4mg/1mL 1mL VIAL.",
])
def test_known_false_positives_of_the_original_survive(text):
    assert redact(text, RULES, TOKEN) == (text, {})


NON_CHEST = [  # rules are scoped to chest findings: these must survive untouched
    "hip fx", "L hip fx", "R wrist fx", "ankle fracture", "nasal fx", "fx of the left hip", "CT head", "head CT",
    "CT abd/pelvis", "abnormal CT head", "MRI brain", "renal ultrasound", "L ankle swelling", "knee effusion",
    "R knee effusion", "elbow effusion", "abdominal mass", "breast mass", "thyroid nodule", "LLE edema",
    "x ray of the ankle", "L wrist fx",
]
CHEST_COUNTERPARTS = ["rib fx", "clavicle fx", "CT chest", "chest CT", "CT", "abnormal CT", "effusion",
                      "pleural effusion", "lung mass", "lung nodule", "pulmonary edema", "edema"]


@pytest.mark.parametrize("phrase", NON_CHEST)
def test_non_chest_phrases_survive_the_filter(phrase):
    assert redact(leak(phrase), RULES, TOKEN) == (leak(phrase), {})


@pytest.mark.parametrize("phrase", CHEST_COUNTERPARTS)
def test_their_chest_counterparts_are_still_redacted(phrase):
    filtered, hits = redact(leak(phrase), RULES, TOKEN)
    assert hits and TOKEN in filtered


@pytest.mark.parametrize("text, expected", [
    ("SOB, pleural effusion", "SOB, #"), ("bilat pleural effusions", "bilat #"), ("CT chest", "#"),
    ("chest CT", "#"), ("Abn CXR", "#"), ("abnormal X ray", "#"), ("Abnormal chest x ray", "#"), ("CTA chest", "#"),
    ("LLL infiltrate", "#"), ("ADHF", "#"), ("HF exac", "#"), ("NGT dislodged", "# dislodged"), ("PPM", "#"),
    ("pacer", "#"), ("mediport", "#"), ("trached", "#"), ("pneumomediastinum", "#"), ("empyema", "#"),
    ("NSCLC", "#"), ("pneumonía", "#"), ("Rhythm: Paced Rhythm.", "Rhythm: #."),
    # a non-chest word beside a chest fracture does not make it benign
    ("s/p fall rib fx hip pain", "s/p fall # hip pain"), ("R rib fx L arm pain", "R # L arm pain"),
    ("L clavicle fx R hand pain", "L # R hand pain"), ("rib/hip fx", "#"), ("rib and hip fx", "#"),
])
def test_no_telling_word_is_left_beside_the_token(text, expected):
    """Whole phrases go as one span ("pleural" of "pleural effusion" named the label on its own), and the variants
    ED triage writes (a spaced "x ray", CTA, ADHF, NGT, a paced rhythm in the vitals, lobe names) are covered."""
    assert redact(text, RULES, "#")[0] == expected


def test_the_retrieval_query_loses_its_leaking_spans_without_a_marker():
    """A marker in the query would steer the search to chest-finding passages: "Cough, [REDACTED]" retrieved
    contusion and infiltrate passages that "Cough" does not. The query is embedded as if the span were never there."""
    t = dt.datetime(2150, 1, 1)
    stage = FilterLeakage(rules_document()["rules"], TOKEN, audit=False)
    stage.setup()
    record = Record(1, 2, "d1", 3, "AP", t, t, None, "p", None, None, "Chief complaint: Cough, PNA.",
                    "Cough, PNA abnormal CXR", (), (), (), (), ())
    [out] = [o for o in stage.process(record) if isinstance(o, Record)]
    assert out.note == f"Chief complaint: Cough, {TOKEN}." and out.query == "Cough,"


def test_our_note_template_is_never_redacted():
    """Every sentence our note template can produce, fully populated, passes the filter untouched."""
    vitals = {"temperature": 101.3, "heartrate": 112.0, "resprate": 24.0, "o2sat": 91.0, "sbp": 150.0, "dbp": 92.0}
    for transport in ("AMBULANCE", "WALK IN", "HELICOPTER"):
        for acuity in mimic.ESI_WORDS:
            snap = Snapshot(age=71, sex="male", arrival=transport, chief_complaint="Weakness", acuity=acuity,
                            pain=None, pain_unassessable=True, triage_vitals=vitals, last_vitals=vitals,
                            rhythm="Atrial Fibrillation", hours_from_arrival=3.25, n_vitals=4,
                            home_meds=("apixaban", "metoprolol"), ed_meds=("Acetaminophen", "CefTRIAXone"),
                            implausible_values=0)
            note = render_note(snap)
            assert redact(note, RULES, TOKEN) == (note, {})


def test_adjacent_and_overlapping_spans_become_one_token():
    filtered, hits = redact("Chief complaint: abnormal CXR consistent with pneumonia.", RULES, TOKEN)
    assert filtered == f"Chief complaint: {TOKEN}." and hits == {"imaging": 1, "report_language": 1, "pneumonia": 1}


def test_rules_cover_all_fourteen_findings_and_are_documented():
    document = rules_document()
    findings = {rule["finding"] for rule in document["rules"]} - {None}
    assert findings == set(mimic.LABELS)
    assert "word boundaries" in document["description"] and "except_before" in document["description"]
    assert len({rule["id"] for rule in document["rules"]}) == len(document["rules"])


def test_extra_rules_replace_by_id_or_add(tmp_path):
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"rules": [{"id": "pneumonia", "finding": "Pneumonia", "patterns": ["lung bug"]},
                                           {"id": "site_specific", "finding": None, "patterns": [r"rad\s+rounds"]}]}))
    rules = load_rules(str(extra))
    assert redact("PNA, lung bug, rad rounds", rules, "#")[0] == "PNA, #, #"  # PNA no longer a rule
    assert len(rules) == len(RULES) + 1


# --- in the pipeline -------------------------------------------------------------------------------------------

def _run_with_labels(roots, base, name, relabel, *flags):
    """Run the job on a copy of the sample whose CheXpert rows were rewritten by ``relabel``; notes by dicom_id."""
    cxr = base / name / "cxr"
    cxr.mkdir(parents=True)
    for table in (mimic.CXR_METADATA, mimic.CXR_SPLIT):
        shutil.copy(Path(roots.cxr) / table.filename, cxr / table.filename)
    with gzip.open(Path(roots.cxr) / mimic.CXR_CHEXPERT.filename, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    write_table(cxr, mimic.CXR_CHEXPERT, relabel(rows))
    output = base / name / "out"
    metadata = run([f"--mimic_cxr_root={cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
                    f"--output={output}", OFFLINE_TEXT, ONE_WORKER, "--images=false", *flags])
    notes, labels = {}, {}
    for path in (published(output) / "tfrecords").glob("*.tfrecord"):
        for raw in read_records(str(path)):
            example = parse_example(raw)
            notes[example["dicom_id"][0]] = example["note/text"][0].decode()
            labels[example["dicom_id"][0]] = tuple(example["labels/binary"])
    return notes, labels, metadata, output


def _permuted(rows):
    values = [[row[label] for label in mimic.LABELS] for row in rows]
    random.Random(1).shuffle(values)
    return [{**row, **dict(zip(mimic.LABELS, v))} for row, v in zip(rows, values)]


def _blank(rows):
    return [{**row, **{label: "" for label in mimic.LABELS}} for row in rows]


def _all_positive(rows):
    return [{**row, **{label: "1.0" for label in mimic.LABELS}} for row in rows]


@pytest.fixture(scope="module")
def sample_roots(tmp_path_factory):
    return sample.generate(tmp_path_factory.mktemp("leak") / "sample", subjects=80, seed=7)


def test_filtered_notes_never_depend_on_the_labels(sample_roots, tmp_path):
    """Property: permuting the label rows across studies, blanking them or making every finding positive changes
    the labels of the records but never a single filtered note."""
    runs = {name: _run_with_labels(sample_roots, tmp_path, name, relabel)
            for name, relabel in (("asis", list), ("permuted", _permuted), ("blank", _blank),
                                  ("positive", _all_positive))}
    notes = {name: r[0] for name, r in runs.items()}
    assert notes["asis"] == notes["permuted"] == notes["blank"] == notes["positive"]
    assert runs["asis"][1] != runs["permuted"][1] != runs["blank"][1]  # the labels really did change
    assert runs["asis"][2]["counts"]["notes"]["redacted"] > 0  # and the filter really did work on these notes
    assert runs["asis"][2]["counts"]["leakage_hits"] == runs["blank"][2]["counts"]["leakage_hits"]


def test_audit_keeps_the_unfiltered_notes_outside_the_training_records(sample_roots, tmp_path):
    notes, _, metadata, output = _run_with_labels(sample_roots, tmp_path, "audit", list, "--leakage_audit")
    audit = [json.loads(line) for path in (published(output) / "audit").glob("*.jsonl") for line in path.open()]
    assert audit and len(audit) == metadata["counts"]["notes"]["redacted"]
    for row in audit:
        assert row["warning"].startswith("UNFILTERED NOTE") and TOKEN in row["filtered_note"]
        assert row["filtered_note"] == notes[row["dicom_id"].encode()] != row["original_note"]
    leaking = re.compile(r"\b(pna|pneumonia)\b", re.IGNORECASE)
    assert any(leaking.search(row["original_note"]) for row in audit)
    assert not any(leaking.search(note) for note in notes.values())
    hits = metadata["counts"]["leakage_hits"]
    assert sum(hits.values()) >= len(audit) and set(hits) <= {r["id"] for r in rules_document()["rules"]}
    assert metadata["text"]["leakage_rules"]["redaction_token"] == TOKEN


def test_workers_apply_the_rules_read_at_launch_even_if_the_file_changes(sample_roots, tmp_path):
    """--leakage_rules is read once, at launch, and metadata.json records every rule: a file edited (or removed)
    while the job runs changes neither what the workers apply nor what the dataset says was applied."""
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"rules": [{"id": "site", "finding": None, "patterns": ["chief complaint"]}]}))
    output = tmp_path / "out"
    config, options = parse([f"--mimic_cxr_root={sample_roots.cxr}", f"--mimic_ed_root={sample_roots.ed}",
                             f"--mimic_iv_root={sample_roots.iv}", f"--output={output}", OFFLINE_TEXT, ONE_WORKER,
                             "--images=false", f"--leakage_rules={extra}"])
    paths, text = resolve_inputs(config), resolve_text(config)
    extra.write_text(json.dumps({"rules": [{"id": "site", "finding": None, "patterns": ["never in a note"]}]}))
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=options)
    build_pipeline(pipeline, in_run_folder(config, dt.datetime.now(dt.timezone.utc)), paths, text, config.output)
    extra.unlink()
    pipeline.run().wait_until_finish()
    metadata = json.loads((published(output) / "metadata.json").read_text())
    notes = [parse_example(raw)["note/text"][0].decode()
             for path in (published(output) / "tfrecords").glob("*.tfrecord") for raw in read_records(str(path))]
    assert notes and all(f"{TOKEN}: " in note and "chief complaint" not in note.lower() for note in notes)
    assert metadata["counts"]["leakage_hits"]["site"] >= len(notes)
    applied = metadata["text"]["leakage_rules"]["rules"]
    assert applied[-1] == {"id": "site", "finding": None, "patterns": ["chief complaint"]}
    assert applied[:-1] == rules_document()["rules"]
