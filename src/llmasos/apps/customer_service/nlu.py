"""Intent classification from a handful of examples per intent, with out-of-scope detection.

Ours (`IntentClassifier`): two views of each utterance, a sentence embedding (all-MiniLM-L6-v2) and character
n-grams (TF-IDF, which also works for Chinese, where the English embedder is weak). Each intent is scored by
its nearest example and its centroid in both views; a logistic regression on the embeddings adds its
probability. The best score decides in-scope or not, against a threshold chosen from the training examples
alone:

- in-scope scores: leave-one-out, each example scored by a model fitted without it;
- out-of-scope scores: leave-one-intent-out, each example scored by a model fitted without its whole intent
  (an unseen intent is exactly what out-of-scope looks like to the model);

the threshold maximises the balanced accuracy of the two sets. The baselines (`CentroidBaseline`,
`LogisticBaseline`) get their thresholds the same way.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmasos.sdk import local_embed


@dataclass
class Prediction:
    text: str
    intent: str | None           # None: out of scope
    confidence: float            # the score the threshold was compared with (0..1)
    best: str                    # the best intent even when out of scope
    ranking: list[tuple[str, float]]  # the top intents with their scores

    def as_dict(self) -> dict:
        return {"text": self.text, "intent": self.intent, "confidence": round(self.confidence, 4),
                "best": self.best, "ranking": [[i, round(s, 4)] for i, s in self.ranking]}


# -- embeddings -------------------------------------------------------------------------------------------------

def _local_encode(texts: list[str]) -> np.ndarray:
    return local_embed(texts)


class Encoder:
    """Sentence embeddings, L2-normalised: through a runtime's or a context's `embed` system call, or the default
    embedder loaded in this process (no OS needed)."""

    def __init__(self, ctx: Any = None, runtime: Any = None) -> None:
        self.ctx, self.runtime = ctx, runtime
        self._cache: dict[str, np.ndarray] = {}

    def _todo(self, texts: list[str]) -> list[str]:
        return list(dict.fromkeys(t for t in texts if t not in self._cache))

    def _store(self, todo: list[str], vecs: Any, texts: list[str]) -> np.ndarray:
        arr = np.asarray(vecs, dtype=np.float32).reshape(len(todo), -1) if todo else None
        if arr is not None:
            arr /= np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
            for t, v in zip(todo, arr, strict=True):
                if len(self._cache) < 50_000:
                    self._cache[t] = v
                else:
                    return np.stack([self._cache[t] if t in self._cache else arr[todo.index(t)] for t in texts])
        return np.stack([self._cache[t] for t in texts])

    def encode(self, texts: list[str]) -> np.ndarray:
        todo = self._todo(texts)
        vecs: Any = []
        if todo:
            if self.runtime is not None:
                vecs = self.runtime.run(self.runtime.ctx.embed(todo))
            elif self.ctx is not None:
                vecs = asyncio.run(self.ctx.embed(todo))  # a remote context, outside any running loop
            else:
                vecs = _local_encode(todo)
        return self._store(todo, vecs, texts)

    async def aencode(self, texts: list[str]) -> np.ndarray:
        todo = self._todo(texts)
        vecs: Any = []
        if todo:
            if self.ctx is not None:
                vecs = []
                for i in range(0, len(todo), 256):
                    vecs.extend(await self.ctx.embed(todo[i:i + 256]))
            elif self.runtime is not None:
                vecs = await self.runtime.ctx.embed(todo)
            else:
                vecs = await asyncio.to_thread(_local_encode, todo)
        return self._store(todo, vecs, texts)


# -- character n-grams -----------------------------------------------------------------------------------------

_CJK = re.compile(r"[\u3400-\u9fff]")


def normalise(text: str) -> str:
    text = text.lower().replace("’", "'")
    text = re.sub(r"\d+", "0", text)
    return re.sub(r"\s+", " ", text).strip()


class CharNgrams:
    """TF-IDF over character 2-4-grams inside word boundaries (plus words), L2-normalised, dense."""

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=1)
        self.words = TfidfVectorizer(analyzer="word", token_pattern=r"(?u)\b\w+\b", sublinear_tf=True)

    def fit(self, texts: list[str]) -> CharNgrams:
        norm = [normalise(t) for t in texts]
        self.chars.fit(norm)
        self.has_words = any(not _CJK.search(t) for t in norm)
        if self.has_words:
            self.words.fit(norm)
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        norm = [normalise(t) for t in texts]
        mats = [self.chars.transform(norm).toarray()]
        if self.has_words:
            mats.append(self.words.transform(norm).toarray())
        x = np.hstack(mats).astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# -- threshold selection ----------------------------------------------------------------------------------------

def choose_threshold(in_scores: np.ndarray, in_correct: np.ndarray, out_scores: np.ndarray,
                     keep: float = 0.95) -> float:
    """The threshold that maximises balanced accuracy (in-scope examples count as right when accepted *and*
    correctly labelled, out-of-scope ones when rejected), capped so that it still accepts `keep` of the in-scope
    examples that were labelled correctly. The cap matters because the leave-one-intent-out negatives are the
    hardest out-of-scope there is (in-domain requests of an unseen intent): balancing against them alone rejects
    too many in-scope requests."""
    cands = np.unique(np.concatenate([in_scores, out_scores]))
    cands = np.concatenate([cands - 1e-6, [cands.max() + 1e-6]])

    vals = np.array([balanced(in_scores, in_correct, out_scores, t) for t in cands])
    best = float(np.median(cands[vals >= vals.max() - 1e-9]))  # the middle of the plateau of best thresholds
    good = in_scores[in_correct]
    if len(good):
        best = min(best, float(np.quantile(good, 1.0 - keep)))
    return best


def balanced(in_scores: np.ndarray, in_correct: np.ndarray, out_scores: np.ndarray, t: float) -> float:
    """In-scope examples accepted and correctly labelled, plus out-of-scope ones rejected, at threshold t."""
    tpr = float(np.mean((in_scores >= t) & in_correct)) if len(in_scores) else 1.0
    tnr = float(np.mean(out_scores < t)) if len(out_scores) else 1.0
    return tpr + tnr


def calibration_value(cal: dict, threshold: float) -> float:
    """`balanced` on the held-out calibration scores of a fit."""
    return balanced(np.array(cal["in_scores"]), np.array(cal["in_correct"], dtype=bool),
                    np.array(cal["out_scores"]), threshold)


# -- scorers ----------------------------------------------------------------------------------------------------

class _Scorer:
    """A fitted scorer: `scores(rows) -> (n, n_intents)` in [0, 1] for the rows given by index into X."""

    intents: list[str]

    def fit(self, feats: dict[str, np.ndarray], y: np.ndarray, intents: list[str]) -> _Scorer:
        raise NotImplementedError

    def scores(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def _centroids(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    c = np.stack([x[y == j].mean(axis=0) for j in range(k)])
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def _max_sim(x: np.ndarray, train: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    sims = x @ train.T
    out = np.full((len(x), k), -1.0, dtype=np.float32)
    for j in range(k):
        cols = y == j
        if cols.any():
            out[:, j] = sims[:, cols].max(axis=1)
    return out


class CentroidScorer(_Scorer):
    """Baseline: cosine similarity to each intent's mean embedding."""

    def fit(self, feats, y, intents):
        self.c = _centroids(feats["emb"], y, len(intents))
        return self

    def scores(self, feats):
        return (feats["emb"] @ self.c.T + 1.0) / 2.0


class LogisticScorer(_Scorer):
    """Baseline: multinomial logistic regression on embeddings; the score is the class probability."""

    def fit(self, feats, y, intents):
        from sklearn.linear_model import LogisticRegression

        self.k = len(intents)
        self.m = LogisticRegression(C=10.0, max_iter=2000).fit(feats["emb"], y)
        return self

    def scores(self, feats):
        p = np.zeros((len(feats["emb"]), self.k), dtype=np.float32)
        p[:, self.m.classes_] = self.m.predict_proba(feats["emb"])
        return p


class HybridScorer(_Scorer):
    """Ours: nearest example and centroid, in embedding and n-gram space, blended."""

    def __init__(self, w_emb: float = 0.75) -> None:
        self.W_EMB, self.W_NGRAM = w_emb, 1.0 - w_emb

    def fit(self, feats, y, intents):
        k = len(intents)
        self.k, self.y = k, y
        self.emb, self.ng = feats["emb"], feats["ng"]
        self.c_emb, self.c_ng = _centroids(self.emb, y, k), _centroids(self.ng, y, k)
        return self

    def scores(self, feats):
        e = 0.5 * _max_sim(feats["emb"], self.emb, self.y, self.k) + 0.5 * (feats["emb"] @ self.c_emb.T)
        n = 0.5 * _max_sim(feats["ng"], self.ng, self.y, self.k) + 0.5 * (feats["ng"] @ self.c_ng.T)
        return np.clip(self.W_EMB * e + self.W_NGRAM * n, 0.0, 1.0)


# -- the classifier ---------------------------------------------------------------------------------------------

class _Base:
    scorer_cls: type[_Scorer] = HybridScorer
    scorer_choices: tuple[dict, ...] = ({},)  # scorer arguments to choose from by cross-validation
    uses_ngrams = True

    def __init__(self, intents: list[str], texts: list[str], labels: np.ndarray, encoder: Encoder) -> None:
        self.intents, self.texts, self.labels, self.encoder = intents, texts, labels, encoder
        self.threshold = 0.0
        self.ngrams: CharNgrams | None = None
        self.scorer_args: dict[str, Any] = {}

    # features: the embedding rows come from the encoder, n-grams are fitted on the training texts
    def _feats(self, emb: np.ndarray, texts: list[str], ngrams: CharNgrams | None) -> dict[str, np.ndarray]:
        feats = {"emb": emb}
        if ngrams is not None:
            feats["ng"] = ngrams.transform(texts)
        return feats

    def _fit_on(self, idx: np.ndarray, feats: dict[str, np.ndarray]) -> tuple[_Scorer, list[int]]:
        """A scorer fitted on the examples `idx`, with its intents re-indexed (some may be missing)."""
        present = sorted(set(int(v) for v in self.labels[idx]))
        remap = {old: new for new, old in enumerate(present)}
        y = np.array([remap[int(v)] for v in self.labels[idx]])
        scorer = self.scorer_cls(**self.scorer_args).fit({k: v[idx] for k, v in feats.items()}, y,
                                                         [self.intents[p] for p in present])
        return scorer, present

    def _calibrate(self, feats: dict[str, np.ndarray]) -> None:
        n = len(self.texts)
        all_idx = np.arange(n)
        in_scores, in_correct, out_scores = [], [], []
        for i in range(n):  # leave one example out
            scorer, present = self._fit_on(all_idx[all_idx != i], feats)
            s = scorer.scores({k: v[[i]] for k, v in feats.items()})[0]
            j = int(np.argmax(s))
            in_scores.append(float(s[j]))
            in_correct.append(present[j] == int(self.labels[i]))
        for lab in range(len(self.intents)):  # leave one intent out
            held, keep = all_idx[self.labels == lab], all_idx[self.labels != lab]
            if len(held) == 0 or len(set(self.labels[keep])) < 2:
                continue
            scorer, _ = self._fit_on(keep, feats)
            s = scorer.scores({k: v[held] for k, v in feats.items()})
            out_scores.extend(float(v) for v in s.max(axis=1))
        self.calibration = {"in_scores": in_scores, "in_correct": in_correct, "out_scores": out_scores}
        self.threshold = choose_threshold(np.array(in_scores), np.array(in_correct, dtype=bool),
                                          np.array(out_scores))

    def _finish(self, emb: np.ndarray) -> None:
        # the n-gram vocabulary and IDF come from the training texts (no labels); every fold shares them
        self.ngrams = CharNgrams().fit(self.texts) if self.uses_ngrams else None
        feats = self._feats(emb, self.texts, self.ngrams)
        best = None
        for args in self.scorer_choices:
            # Each choice is judged on the training examples alone (the held-out folds of _calibrate), never on
            # test data: how well its threshold separates in-scope from unseen intents.
            self.scorer_args = args
            self._calibrate(feats)
            score = calibration_value(self.calibration, self.threshold)
            if best is None or score > best[0] + 1e-9:
                best = (score, args, self.calibration, self.threshold)
        _, self.scorer_args, self.calibration, self.threshold = best
        self.scorer, _ = self._fit_on(np.arange(len(self.texts)), feats)

    def _predict(self, texts: list[str], emb: np.ndarray) -> list[Prediction]:
        s = self.scorer.scores(self._feats(emb, texts, self.ngrams))
        out = []
        for t, row in zip(texts, s, strict=True):
            order = np.argsort(-row)
            best = self.intents[int(order[0])]
            conf = float(row[order[0]])
            ranking = [(self.intents[int(j)], float(row[j])) for j in order[:3]]
            out.append(Prediction(t, best if conf >= self.threshold else None, conf, best, ranking))
        return out

    @staticmethod
    def _flatten(examples: dict[str, list[str]]) -> tuple[list[str], list[str], np.ndarray]:
        if not isinstance(examples, dict) or len(examples) < 2:
            raise ValueError("examples must map at least two intents to their example utterances")
        intents, texts, labels = [], [], []
        for name, exs in examples.items():
            exs = [e.strip() for e in exs if isinstance(e, str) and e.strip()]
            if len(exs) < 2:
                raise ValueError(f"intent {name!r} needs at least 2 examples, got {len(exs)}")
            intents.append(str(name))
            for e in exs:
                texts.append(e)
                labels.append(len(intents) - 1)
        return intents, texts, np.array(labels)

    @classmethod
    def fit(cls, examples: dict[str, list[str]], *, ctx: Any = None, runtime: Any = None):
        """Fit on `{intent: [example, ...]}`; the out-of-scope threshold comes from these examples alone."""
        intents, texts, labels = cls._flatten(examples)
        enc = Encoder(ctx=ctx, runtime=runtime)
        self = cls(intents, texts, labels, enc)
        self._finish(enc.encode(texts))
        return self

    @classmethod
    async def afit(cls, examples: dict[str, list[str]], *, ctx: Any = None, runtime: Any = None):
        """`fit` for code running on an event loop (an app's handler): embeddings through `await ctx.embed`."""
        intents, texts, labels = cls._flatten(examples)
        enc = Encoder(ctx=ctx, runtime=runtime)
        self = cls(intents, texts, labels, enc)
        emb = await enc.aencode(texts)
        await asyncio.to_thread(self._finish, emb)
        return self

    def predict(self, texts: list[str]) -> list[Prediction]:
        texts = [str(t) for t in texts]
        if not texts:
            return []
        return self._predict(texts, self.encoder.encode(texts))

    async def apredict(self, texts: list[str]) -> list[Prediction]:
        texts = [str(t) for t in texts]
        if not texts:
            return []
        return self._predict(texts, await self.encoder.aencode(texts))


class IntentClassifier(_Base):
    """Ours: the hybrid embedding + n-gram scorer, threshold from leave-one-out / leave-one-intent-out. The
    blend of the two is picked the same way: the default embedder is English-only, so Chinese examples lean on
    the character n-grams."""

    scorer_cls = HybridScorer
    scorer_choices = ({"w_emb": 0.75}, {"w_emb": 0.5}, {"w_emb": 0.25})
    uses_ngrams = True


class CentroidBaseline(_Base):
    scorer_cls = CentroidScorer
    uses_ngrams = False


class LogisticBaseline(_Base):
    scorer_cls = LogisticScorer
    uses_ngrams = False
