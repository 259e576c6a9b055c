import pytest

from tunebook import metrics, quality


def test_squad_normalisation_and_exact_match():
    assert metrics.normalize_answer("The  Cat, sat!") == "cat sat"
    assert metrics.exact_match("the cat sat.", ["Cat sat"]) == 1.0
    assert metrics.exact_match("a dog", ["cat", "dog"]) == 1.0
    assert metrics.exact_match("dog", ["cat"]) == 0.0


def test_token_f1_takes_the_best_reference():
    assert metrics.token_f1("serialize obj to json", ["Serialize obj to a JSON string"]) == pytest.approx(
        2 * 1.0 * 0.8 / 1.8
    )
    assert metrics.token_f1("", [""]) == 1.0
    assert metrics.token_f1("x", ["y", "x"]) == 1.0


def test_token_precision_and_recall_are_squads_overlap_and_make_its_f1():
    precision, recall = metrics.token_precision_recall("serialize obj to json", "Serialize obj to a JSON string")
    assert (precision, recall) == (1.0, 0.8)
    assert metrics.token_f1("serialize obj to json", ["Serialize obj to a JSON string"]) == 2 * 1.0 * 0.8 / 1.8
    assert metrics.token_precision_recall("", "the") == (0.0, 0.0)  # no words on either side
    assert metrics.token_precision_recall("dogs", "cats") == (0.0, 0.0) and metrics.token_f1("dogs", ["cats"]) == 0.0


def test_rouge_l_reads_the_words_the_quality_filters_read_stemmed():
    assert metrics.UnicodeTokenizer().tokenize("Parsing, files: café") == ["pars", "file", "café"]
    assert quality.words("Parsing, files: café") == ["parsing", "files", "café"]


def test_rouge_l_is_stemmed_and_keeps_non_ascii():
    assert metrics.rouge_l("parsing files", ["parse file"]) == pytest.approx(1.0)
    # rouge-score's default tokenizer drops non-ASCII text and would score these 0.
    assert metrics.rouge_l("café naïve", ["café naïve"]) == pytest.approx(1.0)
    assert metrics.rouge_l("数据 分析", ["数据 分析"]) == pytest.approx(1.0)


def test_bleu_and_signature():
    score, signature = metrics.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert score == pytest.approx(100.0)
    assert signature.startswith("nrefs:1|")
    assert metrics.sentence_bleu("completely different", ["the cat sat on the mat"]) < 10


def test_score_examples_columns():
    table = metrics.score_examples(["a b", "c"], ["a b", "d"])
    assert list(table.columns) == ["exact_match", "f1", "rouge_l", "bleu"]
    assert table["exact_match"].tolist() == [1.0, 0.0]
