"""Zero-shot heads: agreement with open_clip's builder, class order, frozen scaling, disk cache."""

import dataclasses
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from mtmg.evaluation import metrics
from mtmg.evaluation.embeddings import extract_embeddings
from mtmg.evaluation.scoring import evaluate_zeroshot
from mtmg.models import zeroshot
from mtmg.models.clip import ImageClassifier, ZeroShotHead, load_clip, register_model_config

TINY_CONFIG = Path(__file__).parent / "model_configs" / "TinyCLIP-test.json"
CLASSNAMES = ["annual crop land", "forest", "river", "lake or sea"]
TEMPLATES = ["a centered satellite photo of {}.", "a centered satellite photo of a {}.",
             "a centered satellite photo of the {}."]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A randomly initialised tiny CLIP, saved and reloaded so that its weights have a content id."""
    name = register_model_config(TINY_CONFIG)[0]
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = load_clip(name, None).model
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return load_clip(name, path)


def test_head_equals_open_clip_builder(bundle):
    head = zeroshot.build_zeroshot_head(bundle, None, CLASSNAMES, TEMPLATES)
    reference = open_clip.build_zero_shot_classifier(bundle.model, bundle.tokenizer, CLASSNAMES, TEMPLATES,
                                                     num_classes_per_batch=3)
    torch.testing.assert_close(head.weight, reference.T, rtol=0, atol=1e-6)
    legacy = open_clip.build_zero_shot_classifier_legacy(bundle.model, bundle.tokenizer, CLASSNAMES, TEMPLATES)
    torch.testing.assert_close(head.weight, legacy.T, rtol=0, atol=1e-6)
    assert float(head.logit_scale) == pytest.approx(torch.e ** 2.0)


def test_row_i_is_class_i(bundle):
    head = zeroshot.build_zeroshot_head(bundle.model, bundle.tokenizer, CLASSNAMES, TEMPLATES)
    with torch.no_grad():
        for i, name in enumerate(CLASSNAMES):
            texts = bundle.tokenizer([t.format(name) for t in TEMPLATES])
            expected = F.normalize(F.normalize(bundle.model.encode_text(texts), dim=-1).mean(0), dim=0)
            torch.testing.assert_close(head.weight[i], expected, rtol=0, atol=1e-6)
    named = zeroshot.build_zeroshot_head(bundle, None, CLASSNAMES, [t.replace("{}", "{c}") for t in TEMPLATES])
    torch.testing.assert_close(named.weight, head.weight, rtol=0, atol=0)
    permuted = zeroshot.build_zeroshot_head(bundle, None, CLASSNAMES[::-1], TEMPLATES)
    torch.testing.assert_close(permuted.weight, head.weight.flip(0), rtol=0, atol=1e-6)
    assert not torch.allclose(head.weight[0], head.weight[1])


def test_head_is_frozen_and_normalises_inputs(bundle):
    head = zeroshot.build_zeroshot_head(bundle, None, CLASSNAMES, TEMPLATES)
    assert list(head.parameters()) == []
    assert set(head.state_dict()) == {"weight", "logit_scale"}
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(len(CLASSNAMES)))
    features = torch.randn(6, head.weight.shape[1], requires_grad=True)
    logits = head(features)
    expected = head.logit_scale * F.normalize(features, dim=-1) @ head.weight.T
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(head(5 * features), logits)
    logits.sum().backward()  # gradients reach the features (student training), not the head
    assert features.grad is not None and features.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="classes, dim"):
        ZeroShotHead(torch.ones(3), 1.0)


def test_cache_reuse_and_invalidation(bundle, tmp_path, monkeypatch):
    builds = []
    build = zeroshot.build_zeroshot_head

    def counting_build(*args, **kwargs):
        builds.append(args)
        return build(*args, **kwargs)
    monkeypatch.setattr(zeroshot, "build_zeroshot_head", counting_build)

    first = zeroshot.zeroshot_head(bundle, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, dataset="eurosat_ms")
    files = list(tmp_path.glob("*.pt"))
    assert len(builds) == 1 and len(files) == 1 and "eurosat_ms" in files[0].name
    stored = torch.load(files[0], weights_only=True)
    torch.testing.assert_close(stored["weight"], first.weight)

    # the second call reads the file: make the stored head recognisable
    stored["weight"] = stored["weight"].flip(0)
    torch.save(stored, files[0])
    again = zeroshot.zeroshot_head(bundle, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, dataset="eurosat_ms")
    assert len(builds) == 1
    torch.testing.assert_close(again.weight, first.weight.flip(0))
    torch.testing.assert_close(again.logit_scale, first.logit_scale)

    variants = [
        dict(bundle=dataclasses.replace(bundle, model_name="other-model")),
        dict(bundle=dataclasses.replace(bundle, weights="patched.pt@sha256:0000")),
        dict(dataset="eurosat_rgb"),
        dict(classnames=CLASSNAMES[:-1] + ["sea"]),
        dict(templates=TEMPLATES[:2]),
    ]
    for i, change in enumerate(variants, start=2):
        args = dict(bundle=bundle, classnames=CLASSNAMES, templates=TEMPLATES, dataset="eurosat_ms") | change
        head = zeroshot.zeroshot_head(args["bundle"], args["classnames"], args["templates"], cache_dir=tmp_path,
                                      dataset=args["dataset"])
        assert len(builds) == i, change
        assert len(list(tmp_path.glob("*.pt"))) == i
        assert head.weight.shape[0] == len(args["classnames"])


def test_head_built_now_equals_the_head_read_from_the_cache_bit_for_bit(bundle, tmp_path, monkeypatch):
    # a head whose unit rows move in the last bit when normalised again (fp32 normalisation is not exact)
    head = ZeroShotHead(torch.randn(len(CLASSNAMES), 128, generator=torch.Generator().manual_seed(1)), 100.0)
    assert not torch.equal(ZeroShotHead(head.weight, head.logit_scale).weight, head.weight)
    monkeypatch.setattr(zeroshot, "build_zeroshot_head", lambda *args, **kwargs: head)
    built = zeroshot.zeroshot_head(bundle, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, dataset="eurosat_ms")
    loaded = zeroshot.zeroshot_head(bundle, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, dataset="eurosat_ms")
    uncached = zeroshot.zeroshot_head(bundle, CLASSNAMES, TEMPLATES, cache_dir=None)
    assert torch.equal(built.weight, loaded.weight) and torch.equal(built.weight, uncached.weight)
    assert torch.equal(built.logit_scale, loaded.logit_scale)


def test_random_weights_are_not_cached(bundle, tmp_path):
    random_bundle = dataclasses.replace(bundle, weights="random-init")
    zeroshot.zeroshot_head(random_bundle, CLASSNAMES, TEMPLATES, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_key_depends_on_every_input():
    base = ("m", "w", "d", ["a", "b"], ["{}"])
    keys = {zeroshot.head_cache_key(*base)}
    for i, other in enumerate(("m2", "w2", "d2", ["b", "a"], ["{}."])):
        changed = list(base)
        changed[i] = other
        keys.add(zeroshot.head_cache_key(*changed))
    assert len(keys) == 6


class _Counting(torch.nn.Module):
    """A fixed linear encoder that counts its calls."""

    def __init__(self, dim_in=6, dim_out=4):
        super().__init__()
        self.linear = torch.nn.Linear(dim_in, dim_out)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.linear(x)


def _loader(n=10, multilabel=False, key="ms"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    targets = (torch.rand(n, 3, generator=g) < 0.5).float() if multilabel else torch.arange(n) % 3
    samples = [{key: x[i], "target": targets[i] if multilabel else int(targets[i]), "id": f"s{i}"} for i in range(n)]
    return torch.utils.data.DataLoader(samples, batch_size=4), x, targets


def test_extract_embeddings_order_targets_and_cache(tmp_path):
    encoder = _Counting().train()
    loader, x, targets = _loader()
    cache = tmp_path / "emb.pt"
    emb, got_targets = extract_embeddings(encoder, loader, key="ms", cache_path=cache, cache_key="k1")
    with torch.no_grad():
        torch.testing.assert_close(emb, encoder.linear(x))
    assert torch.equal(got_targets, targets) and got_targets.dtype == torch.long
    assert encoder.training and encoder.calls == 3  # mode restored; 3 batches
    again, _ = extract_embeddings(encoder, loader, key="ms", cache_path=cache, cache_key="k1")
    assert encoder.calls == 3 and torch.equal(again, emb)
    assert torch.load(cache, weights_only=True)["key"] == "k1"
    extract_embeddings(encoder, loader, key="ms", cache_path=cache, cache_key="k2")
    assert encoder.calls == 6  # another key: computed again
    with pytest.raises(KeyError, match="'rgb'"):
        extract_embeddings(encoder, loader, key="rgb")


def test_evaluate_zeroshot_single_and_multi_label():
    head = ZeroShotHead(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), 10.0)
    encoder = _Counting()
    classifier = ImageClassifier(encoder, head)
    loader, x, targets = _loader(n=12)
    with torch.no_grad():
        logits = classifier(x)
    result = evaluate_zeroshot(classifier, loader, key="ms", multilabel=False)
    assert result["n_samples"] == 12
    assert result["top1"] == pytest.approx((logits.argmax(1) == targets).float().mean().item())
    assert result["confusion_matrix"] == metrics.confusion_matrix(logits, targets, 3).tolist()
    loader, x, targets = _loader(n=12, multilabel=True)
    with torch.no_grad():
        logits = classifier(x)
    result = evaluate_zeroshot(classifier, loader, key="ms", multilabel=True)
    assert result["macro_ap"] == pytest.approx(metrics.macro_average_precision(logits, targets))
    assert len(result["per_class_ap"]) == 3 and result["n_samples"] == 12


@pytest.mark.parametrize("content", [b"", b"garbage", "truncated"])
def test_corrupt_head_cache_is_rebuilt_with_a_warning(bundle, tmp_path, content):
    first = zeroshot.zeroshot_head(bundle, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, dataset="eurosat_ms")
    [path] = tmp_path.glob("*.pt")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2] if content == "truncated" else content)
    with pytest.warns(UserWarning, match=f"ignoring corrupt cache file {path}"):
        again = zeroshot.zeroshot_head(bundle, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, dataset="eurosat_ms")
    torch.testing.assert_close(again.weight, first.weight, rtol=0, atol=0)
    torch.testing.assert_close(torch.load(path, weights_only=True)["weight"], first.weight)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_cache_file_without_a_head_is_a_miss(bundle, tmp_path):
    first = zeroshot.zeroshot_head(bundle, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, dataset="eurosat_ms")
    [path] = tmp_path.glob("*.pt")
    key = torch.load(path, weights_only=True)["key"]
    torch.save({"key": key, "weight": [1, 2]}, path)  # the right key, but no head inside
    again = zeroshot.zeroshot_head(bundle, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, dataset="eurosat_ms")
    torch.testing.assert_close(again.weight, first.weight, rtol=0, atol=0)


def test_corrupt_embedding_cache_is_recomputed(tmp_path):
    encoder = _Counting()
    loader, _, _ = _loader()
    cache = tmp_path / "emb.pt"
    emb, _ = extract_embeddings(encoder, loader, key="ms", cache_path=cache, cache_key="k1")
    cache.write_bytes(b"")
    with pytest.warns(UserWarning, match="emb.pt: the file is empty"):
        again, _ = extract_embeddings(encoder, loader, key="ms", cache_path=cache, cache_key="k1")
    assert encoder.calls == 6 and torch.equal(again, emb)
    assert torch.equal(torch.load(cache, weights_only=True)["embeddings"], emb)
