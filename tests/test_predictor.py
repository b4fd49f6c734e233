"""Predictor.from_run(...).predict(task, inputs): the same predictions the trainer wrote."""

import csv

import numpy as np
import pytest
from tiny_run import run_config

import minbert
from minbert.data.io import read_task_file
from minbert.data.tasks import TASKS
from minbert.eval.predictor import Predictor, PredictorError
from minbert.run.layout import RunDir
from minbert.train.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tiny_setup, tmp_path_factory):
    run = tmp_path_factory.mktemp("predictor") / "run"
    config = run_config(tiny_setup, "train.epochs=1", "heads.quora.calibrate=0.2")
    Trainer(config, run).run()
    return run


def _written(run, task):
    with RunDir(run).predictions(task, "dev").open(encoding="utf-8") as f:
        return [float(row["prediction"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("task", ["sst", "quora", "sts"])
def test_predictions_equal_the_trainers_prediction_files(trained, tiny_setup, task):
    predictor = minbert.Predictor.from_run(trained)
    assert predictor.tasks == ["sst", "quora", "sts"]
    dev = read_task_file(tiny_setup / "data" / TASKS[task].files["dev"], TASKS[task], "dev")
    inputs = [t[0] if len(t) == 1 else t for t in dev.texts]
    got = predictor.predict(task, inputs)
    np.testing.assert_allclose(got, _written(trained, task), atol=1e-4)  # CSV: 4 decimals
    np.testing.assert_array_equal(predictor.predict_data(dev), got)


def test_bad_requests_name_what_is_wrong(trained):
    predictor = Predictor.from_run(trained)
    with pytest.raises(PredictorError, match=r"did not train task 'cfimdb'; it trained \['sst'"):
        predictor.predict("cfimdb", ["a film"])
    with pytest.raises(PredictorError, match="input 0: task sts takes \\(sentence1, sentence2\\)"):
        predictor.predict("sts", ["only one sentence"])
    with pytest.raises(PredictorError, match="input 1: task sst takes single sentences"):
        predictor.predict("sst", ["fine", ("a", "b")])
    with pytest.raises(PredictorError, match="input 0: empty text"):
        predictor.predict("sst", ["   "])
    assert predictor.predict("sst", []).shape == (0,)


@pytest.mark.parametrize("task", ["sst", "quora", "sts"])
def test_padding_batches_to_a_multiple_changes_no_answer(trained, tiny_setup, task):
    dev = read_task_file(tiny_setup / "data" / TASKS[task].files["dev"], TASKS[task], "dev")
    inputs = [t[0] if len(t) == 1 else t for t in dev.texts]
    plain = Predictor.from_run(trained).outputs(task, inputs)
    padded = Predictor.from_run(trained, pad_multiple=16).outputs(task, inputs)
    # the same classes; scores and outputs to rounding (a longer padded row changes the
    # order of some float sums in the kernels)
    np.testing.assert_allclose(plain.values, padded.values, atol=1e-5, rtol=0)
    np.testing.assert_allclose(plain.outputs, padded.outputs, atol=1e-5)
    if TASKS[task].label_kind != "score":
        np.testing.assert_array_equal(plain.values, padded.values)
    if task != "quora":  # quora is cross-encoded here: no sentence embeddings
        sentences = [t[0] for t in dev.texts]
        np.testing.assert_allclose(
            Predictor.from_run(trained).embed(task, sentences),
            Predictor.from_run(trained, pad_multiple=16).embed(task, sentences),
            atol=1e-5,
        )
