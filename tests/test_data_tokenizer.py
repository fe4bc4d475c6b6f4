"""SentencePiece training, the fixed special ids, and the text -> ids -> text round trip."""

import pytest
import sentencepiece as spm

from admin_ds.data import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_sentencepiece
from admin_ds.errors import UserError

SENTENCES = [
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Ich habe heute keine Zeit.",
    "The quick brown fox jumps over the lazy dog.",
    "Wir gehen morgen ins Kino, wenn es regnet.",
    "Tom didn't want to go to school today.",
    "Größe, Straße und Fußgänger sind deutsche Wörter.",
] * 20


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_special_ids_are_fixed_and_text_round_trips(corpus_file, tmp_path, model_type):
    model = train_sentencepiece([corpus_file], tmp_path / "m", vocab_size=120, model_type=model_type)
    tokenizer = Tokenizer(model)
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert [tokenizer.piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    for sentence in set(SENTENCES):
        ids = tokenizer.encode(sentence)
        assert ids and min(ids) > EOS_ID, "plain text must not produce special ids"
        assert tokenizer.decode(ids) == sentence
        assert tokenizer.decode([BOS_ID] + ids + [EOS_ID, PAD_ID, PAD_ID]) == sentence
    assert tokenizer.encode_batch(list(set(SENTENCES)), num_threads=2) == [
        tokenizer.encode(s) for s in set(SENTENCES)
    ]


def test_a_model_keeps_no_folders_of_the_machine_that_trained_it(corpus_file, tmp_path):
    elsewhere = tmp_path / "another" / "folder"
    elsewhere.mkdir(parents=True)
    (elsewhere / corpus_file.name).write_bytes(corpus_file.read_bytes())
    first = train_sentencepiece([corpus_file], tmp_path / "m", vocab_size=120)
    second = train_sentencepiece([elsewhere / corpus_file.name], elsewhere / "m", vocab_size=120)
    assert first.read_bytes() == second.read_bytes()
    for folder in (str(tmp_path), str(corpus_file.parent)):
        assert folder.encode() not in first.read_bytes()
    # only the trainer's record changed: the same pieces and scores as sentencepiece's own file
    spm.SentencePieceTrainer.train(input=str(corpus_file), model_prefix=str(tmp_path / "own"), vocab_size=120,
                                   model_type="bpe", character_coverage=1.0,
                                   pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                                   hard_vocab_limit=False, minloglevel=2)
    ours, own = spm.SentencePieceProcessor(model_file=str(first)), spm.SentencePieceProcessor(
        model_file=str(tmp_path / "own.model"))
    assert ours.get_piece_size() == own.get_piece_size()
    assert all(ours.id_to_piece(i) == own.id_to_piece(i) and ours.get_score(i) == own.get_score(i)
               for i in range(own.get_piece_size()))


def test_vocab_size_is_a_soft_limit_on_small_corpora(corpus_file, tmp_path):
    tokenizer = Tokenizer(train_sentencepiece([corpus_file], tmp_path / "m", vocab_size=5000))
    assert 4 < tokenizer.vocab_size < 5000


def test_unknown_characters_map_to_unk(corpus_file, tmp_path):
    tokenizer = Tokenizer(train_sentencepiece([corpus_file], tmp_path / "m", vocab_size=100))
    assert UNK_ID in tokenizer.encode("漢字")


def test_model_with_other_special_ids_is_rejected(corpus_file, tmp_path):
    # SentencePiece's defaults: unk=0, bos=1, eos=2, no pad.
    spm.SentencePieceTrainer.train(input=str(corpus_file), model_prefix=str(tmp_path / "default"),
                                   vocab_size=60, minloglevel=2)
    with pytest.raises(UserError, match="special ids"):
        Tokenizer(tmp_path / "default.model")


def test_bad_model_path_and_vocab_size(corpus_file, tmp_path):
    with pytest.raises(UserError, match="not found"):
        Tokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot load"):
        Tokenizer(tmp_path / "junk.model")
    with pytest.raises(UserError, match="larger than"):
        train_sentencepiece([corpus_file], tmp_path / "m", vocab_size=4)
    with pytest.raises(UserError, match="model type"):
        train_sentencepiece([corpus_file], tmp_path / "m", vocab_size=100, model_type="word2vec")
