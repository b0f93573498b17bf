"""LEAF's JSON format: read exactly (by byte offsets per user), malformed files named, tasks told
apart, FEMNIST's images in LEAF's orientation, users mapped to clients by seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fedmirasol.config import load_config
from fedmirasol.data.leaf import LeafFederation, LeafFormatError, index_file
from fedmirasol.data.leaf.tasks import ALL_LETTERS, UNKNOWN_LETTER, infer_task, sent140_ids
from fedmirasol.data.leaf.writer import write_leaf_dataset
from fedmirasol.errors import ConfigError
from fedmirasol.task import data as task_data


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMIRASOL_CACHE", str(tmp_path / "cache"))


# Written by hand, formatted the way json.dump would not (indentation, spaces before colons,
# keys in another order), with user ids and text holding brackets, braces, quotes, escapes.
HAND_WRITTEN = r"""{
  "num_samples" : [2, 1, 3],
  "hierarchies": [["play A"], ["play B"], ["play A"]],
  "users" : ["ROMEO", "JULIET [\"nurse\"] {x}", "a\\b"],
  "user_data" : {
    "ROMEO" : {"y": ["e", "]"],
               "x": ["But soft, what light through yonder window breaks? It is the east, and Juliet th",
                     "{[\"]}\\ sunne: arise faire Sun and kill the enuious Moone, who is already sicke.."]},
    "JULIET [\"nurse\"] {x}" : {"x": ["O Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name;.."],
                               "y" : ["h"]},
    "a\\b": {"x": ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\u00e9xxxxxx#",
                   "                                                                                ",
                   "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n"],
             "y": ["}", " ", "\n"]}
  }
}"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_index_reads_hand_written_leaf_json_exactly(tmp_path: Path) -> None:
    path = write(tmp_path / "train" / "all_data_0.json", HAND_WRITTEN)
    expected = json.loads(HAND_WRITTEN)
    index = index_file(path)
    assert index.users == tuple(expected["users"])
    assert index.num_samples == dict(zip(expected["users"], expected["num_samples"]))
    assert index.hierarchies == dict(zip(expected["users"], expected["hierarchies"]))
    for user in expected["users"]:
        assert index.read(user) == expected["user_data"][user]
    # The second look comes from the cache on disk and says the same.
    again = index_file(path)
    assert again.spans == index.spans and again.users == index.users


def test_a_federation_reads_users_samples_and_labels_exactly(tmp_path: Path) -> None:
    write(tmp_path / "train" / "a.json", HAND_WRITTEN)
    write_leaf_dataset(tmp_path / "other", {}, {})  # not part of this folder
    test = {"users": ["ROMEO", "JULIET [\"nurse\"] {x}", "a\\b"], "num_samples": [1, 1, 0],
            "user_data": {"ROMEO": {"x": ["z" * 80], "y": ["a"]},
                          "JULIET [\"nurse\"] {x}": {"x": ["Q" * 80], "y": ["Q"]},
                          "a\\b": {"x": [], "y": []}}}
    write(tmp_path / "test" / "a.json", json.dumps(test))
    leaf = LeafFederation(tmp_path)
    assert leaf.task.name == "shakespeare"  # told from the first sample
    assert leaf.users == ("JULIET [\"nurse\"] {x}", "ROMEO")  # "a\\b" has no test sample
    romeo = leaf.examples("ROMEO", "train", 80).examples
    first = "But soft, what light through yonder window breaks? It is the east, and Juliet th"
    assert romeo[0][0].tolist() == [ALL_LETTERS.index(c) for c in first]
    assert [label for _, label in romeo] == [ALL_LETTERS.index("e"), ALL_LETTERS.index("]")]
    assert romeo[1][0][:3].tolist() == [UNKNOWN_LETTER, ALL_LETTERS.index("["),
                                        ALL_LETTERS.index('"')]  # "{" is not LEAF's
    assert leaf.examples("ROMEO", "test", 80).examples[0][1] == ALL_LETTERS.index("a")
    assert leaf.hierarchy("ROMEO") == ["play A"]


def test_a_character_outside_leafs_alphabet_gets_the_unknown_id(tmp_path: Path) -> None:
    x = "é" + "a" * 79
    write_leaf_dataset(tmp_path, {"u": {"x": [x], "y": ["a"]}}, {"u": {"x": [x], "y": ["a"]}})
    tokens = LeafFederation(tmp_path, "shakespeare").examples("u", "train", 80).examples[0][0]
    assert tokens[0].item() == UNKNOWN_LETTER and tokens[1].item() == ALL_LETTERS.index("a")


def synthetic(users: int = 3, per_user: int = 4, dim: int = 5) -> dict:
    rng = np.random.default_rng(0)
    return {f"u{k}": {"x": rng.normal(size=(per_user, dim)).round(3).tolist(),
                      "y": [int(v) for v in rng.integers(0, 3, per_user)]} for k in range(users)}


def test_synthetic_features_and_labels_come_back_exactly(tmp_path: Path) -> None:
    train, test = synthetic(), synthetic(per_user=2)
    write_leaf_dataset(tmp_path, train, test)
    leaf = LeafFederation(tmp_path)
    assert leaf.task.name == "synthetic" and leaf.input_shape == (5,)
    for user, data in train.items():
        examples = leaf.examples(user, "train", 3).examples
        np.testing.assert_array_equal(np.stack([x.numpy() for x, _ in examples]),
                                      np.asarray(data["x"], dtype=np.float32))
        assert [y for _, y in examples] == data["y"]
    assert leaf.num_classes(list(leaf.users)) == 1 + max(
        y for part in (train, test) for d in part.values() for y in d["y"])


def test_missing_user_data_is_a_named_error(tmp_path: Path) -> None:
    path = write(tmp_path / "train" / "bad.json", json.dumps({"users": ["a"], "num_samples": [1]}))
    with pytest.raises(LeafFormatError, match=r"LEAF file .*bad\.json: missing 'user_data'"):
        index_file(path)


def test_num_samples_disagreeing_with_x_names_the_file_and_user(tmp_path: Path) -> None:
    content = {"users": ["alice", "bob"], "num_samples": [2, 3],
               "user_data": {"alice": {"x": [[1.0], [2.0]], "y": [0, 1]},
                             "bob": {"x": [[1.0], [2.0]], "y": [0, 1]}}}
    path = write(tmp_path / "train" / "counts.json", json.dumps(content))
    index = index_file(path)
    assert index.read("alice")["y"] == [0, 1]
    with pytest.raises(LeafFormatError) as error:
        index.read("bob")
    message = str(error.value)
    assert "counts.json" in message and "user 'bob'" in message
    assert "num_samples says 3 but 'x' holds 2 samples" in message


@pytest.mark.parametrize("problem, content, expected", [
    ("x and y lengths", {"x": [[1.0]], "y": [0, 1]}, "'x' holds 1 samples but 'y' 2"),
    ("no y", {"x": [[1.0]]}, "needs both 'x' and 'y'"),
])
def test_a_broken_user_entry_names_the_file_and_user(tmp_path: Path, problem: str,
                                                     content: dict, expected: str) -> None:
    data = {"users": ["carol"], "num_samples": [1], "user_data": {"carol": content}}
    index = index_file(write(tmp_path / "train" / "x.json", json.dumps(data)))
    with pytest.raises(LeafFormatError, match=rf"x\.json, user 'carol': .*{expected}"):
        index.read("carol")


@pytest.mark.parametrize("text, expected", [
    ('{"users": ["a"], "num_samples": [1], "user_data": {"a": {"x": [[1]], "y": [0]}', "ends early"),
    ('{"users": ["a", "b"], "num_samples": [1], "user_data": {}}', "one count per user"),
    ('{"users": ["a"], "num_samples": [1], "user_data": {"b": {"x": [], "y": []}}}',
     "'a': listed in 'users' but has no entry"),
    ("", "empty"),
])
def test_malformed_files_are_named_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "train" / "broken.json", text)
    with pytest.raises(LeafFormatError, match="broken.json") as error:
        index_file(path)
    assert expected in str(error.value)


def test_a_wrong_x_length_for_the_task_names_the_file_user_and_sample(tmp_path: Path) -> None:
    good = [0.5] * 784
    train = {"w1": {"x": [good, good], "y": [3, 4]}, "w2": {"x": [good, [0.5] * 783], "y": [1, 2]}}
    write_leaf_dataset(tmp_path, train, {u: {"x": [good], "y": [0]} for u in train})
    leaf = LeafFederation(tmp_path, "femnist")
    assert len(leaf.examples("w1", "train", 62).examples) == 2
    with pytest.raises(LeafFormatError) as error:
        leaf.examples("w2", "train", 62)
    message = str(error.value)
    assert "all_data_train.json" in message and "user 'w2'" in message and "sample 1" in message
    assert "784 numbers" in message and "783 values" in message
    write_leaf_dataset(tmp_path / "b", {"w": {"x": [good], "y": [62]}},
                       {"w": {"x": [good], "y": [0]}})
    with pytest.raises(LeafFormatError, match="label 62 is outside the task's 62 classes"):
        LeafFederation(tmp_path / "b", "femnist").examples("w", "train", 62)


def test_femnist_images_keep_leafs_orientation(tmp_path: Path) -> None:
    """LEAF's data_to_json.py: PIL greyscale 28 x 28 -> np.asarray -> flatten (row by row) / 255.
    A bar across the top and one down the left edge must come back there, not transposed."""
    image = Image.new("L", (28, 28), 255)  # FEMNIST: white background (1.0)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 27, 2), fill=0)  # rows 0-2, every column: black
    draw.rectangle((0, 10, 1, 27), fill=128)  # columns 0-1, rows 10-27: grey
    vector = (np.asarray(image).flatten() / 255).tolist()
    write_leaf_dataset(tmp_path, {"f0": {"x": [vector], "y": [7]}},
                       {"f0": {"x": [vector], "y": [7]}})
    (pixels, label), = LeafFederation(tmp_path).examples("f0", "train", 62).examples
    assert pixels.shape == (1, 28, 28) and label == 7
    assert (pixels[0, :3] == 0).all() and (pixels[0, 3:10] == 1).all()
    np.testing.assert_allclose(pixels[0, 10:, :2], 128 / 255, rtol=1e-6)
    assert (pixels[0, 10:, 2:] == 1).all()


@pytest.mark.parametrize("x, task", [
    ([0.0] * 784, "femnist"), ([0.1] * 60, "synthetic"), ("a" * 80, "shakespeare"),
    (["1467810369", "Mon Apr 06", "NO_QUERY", "user", "is upset"], "sent140"),
    ("000001.jpg", "celeba"),
])
def test_the_task_is_told_from_a_sample(x: object, task: str) -> None:
    assert infer_task(x, "f.json", "u") == task


def test_sent140_keeps_leafs_first_25_words() -> None:
    ids = sent140_ids("I can't BELIEVE it, again!! " + "w " * 40)
    assert len(ids) == 25 and all(1 <= i for i in ids)
    assert ids[0] == sent140_ids("i")[0]  # lower-cased
    assert sent140_ids("ok")[1:] == [0] * 24  # padding


def leaf_config(path: Path, *extra: str):
    return load_config(None, ["data.source='leaf'", f"data.leaf-path='{path}'",
                              "model.name='leaf-logreg'", *extra])


def test_users_map_to_clients_by_seed_and_are_listed(tmp_path: Path) -> None:
    train = synthetic(users=12, per_user=3)
    write_leaf_dataset(tmp_path, train, synthetic(users=12, per_user=1))
    chosen = {seed: [task_data.partition_summary(leaf_config(tmp_path, "data.num-clients=4",
                                                             f"seed={seed}"))]
              for seed in (0, 1)}
    again = task_data.partition_summary(leaf_config(tmp_path, "data.num-clients=4", "seed=0"))
    assert chosen[0][0] == again
    users = [row["leaf-user"] for row in again]
    assert users == sorted(users) and len(set(users)) == 4 and set(users) <= set(train)
    assert users != [row["leaf-user"] for row in chosen[1][0]]
    assert [row["partition-id"] for row in again] == [0, 1, 2, 3]
    assert all(row["train"] == 3 and row["val"] == 1 and sum(row["labels"]) == 4
               for row in again)
    config = leaf_config(tmp_path, "data.num-clients=4", "seed=0")
    for pid, user in enumerate(users):
        data = task_data.client_data(config, pid)
        assert [int(s["label"]) for s in data.train] == train[user]["y"]
    everyone = task_data.partition_summary(leaf_config(tmp_path, "data.num-clients=12"))
    assert [row["leaf-user"] for row in everyone] == sorted(train)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.leaf-path"):
        load_config(None, ["data.source='leaf'"])
    with pytest.raises(ConfigError, match="data.leaf-task"):
        load_config(None, ["data.source='leaf'", "data.leaf-path='x'", "data.leaf-task='mnist'"])
    write_leaf_dataset(tmp_path, synthetic(users=2), synthetic(users=2))
    with pytest.raises(ConfigError, match=r"data.num-clients = 5 .* has 2 users"):
        task_data.specs(leaf_config(tmp_path, "data.num-clients=5"))
    with pytest.raises(ConfigError, match="no train/ and test/"):
        task_data.specs(leaf_config(tmp_path / "train"))
    with pytest.raises(ConfigError, match=r"model.name = 'leaf-cnn' .* use 'leaf-logreg'"):
        task_data.specs(leaf_config(tmp_path, "model.name='leaf-cnn'", "data.num-clients=2"))
    with pytest.raises(ConfigError, match=r"task.name = 'videoqa' .* LEAF's tasks are"):
        task_data.specs(leaf_config(tmp_path, "task.name='videoqa'", "data.num-clients=2",
                                    "model.name='tiny'"))
    with pytest.raises(ConfigError, match=r"'tiny' cannot take the LEAF task 'synthetic'"):
        task_data.specs(leaf_config(tmp_path, "model.name='tiny'", "data.num-clients=2"))
