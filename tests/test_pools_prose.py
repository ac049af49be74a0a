"""The built-in prose corpus (`source: prose`): what it holds, in a fixed order, and its identity."""

from pydoc_data.topics import topics

from stages.corpus import CorpusConfig, corpus_identity
from stages.prose import MIN_DOCSTRING, prose_texts


def test_the_built_in_prose_is_the_pydoc_topics_then_the_stdlibs_longer_docstrings():
    texts = list(prose_texts(len(topics) + 50))
    assert texts[: len(topics)] == [topics[name] for name in sorted(topics)]
    assert len(texts) == len(topics) + 50 and all(len(text) >= MIN_DOCSTRING for text in texts[len(topics) :])
    assert list(prose_texts(len(topics) + 50)) == texts  # the same documents every time
    prose, code = (corpus_identity(CorpusConfig(source=source)) for source in ("prose", "stdlib"))
    assert prose == {**code, "source": "prose"}
