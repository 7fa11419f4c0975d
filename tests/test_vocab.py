from captioner.text import tokenize
from captioner.vocab import Vocabulary


def test_tokenizer_lowercases_and_drops_punctuation():
    assert tokenize("A Man, riding a HORSE!") == ["a", "man", "riding", "a", "horse"]
    assert tokenize("  two dogs ; playing...  ") == ["two", "dogs", "playing"]


def test_vocab_min_count_and_order_are_deterministic():
    caps = ["a dog runs", "a dog sits", "a cat sits", "a bird"]
    v = Vocabulary.build(caps, min_count=2)
    assert v.itos == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "sits"]
    assert Vocabulary.build(list(reversed(caps)), min_count=2) == v


def test_encode_decode_round_trip_and_truncation():
    v = Vocabulary.build(["a dog runs on the grass"] * 5, min_count=1)
    ids = v.encode("A dog runs on the grass.")
    assert ids[0] == v.start_id and ids[-1] == v.end_id
    assert v.decode(ids[1:]) == "a dog runs on the grass"
    assert v.encode("a dog runs on the grass", max_len=2) == [v.start_id, v.stoi["a"], v.stoi["dog"], v.end_id]
    assert v.encode("a zebra")[2] == v.unk_id
    assert v.decode([v.stoi["a"], v.unk_id, v.stoi["dog"], v.end_id, v.stoi["runs"]]) == "a dog"


def test_json_round_trip():
    v = Vocabulary.build(["x y z"] * 3, min_count=1)
    assert Vocabulary.from_json(v.to_json()) == v
