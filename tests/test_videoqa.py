"""Video QA and captioning: the questions and their answers, prompts masked out of the text
loss, batched generation with a KV cache equal to generation without it, the metrics equal to
the libraries', DP-SGD's per-sample gradients on the QA loss, late fusion's decoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedmirasol.data.batch import collate
from fedmirasol.data.questions import QUESTION_TYPES, parse_question_types
from fedmirasol.data.synthetic import SyntheticConfig
from fedmirasol.data.videoqa import QUESTIONS, SyntheticVideoQA, answers
from fedmirasol.models import build_model, get_config
from fedmirasol.models.generation import generate_ids
from fedmirasol.privacy.expanded_weights import ExpandedWeightsObjective
from fedmirasol.privacy.objective import per_sample_loss
from fedmirasol.training.loop import evaluate
from fedmirasol.training.text_metrics import bleu4, cider, exact_match, normalize

torch.set_num_threads(1)
MODEL = get_config("tiny", num_frames=8, text_weight=1.0, text_depth=2)


def qa_batch(count: int = 6, frames: int = 8, types=QUESTION_TYPES[:6]) -> dict:
    data = SyntheticVideoQA(SyntheticConfig.for_model(MODEL.replace(num_frames=frames)), count,
                            seed=5, question_types=types)
    return collate([data[i] for i in range(count)])


def model(seed: int = 0, config=MODEL) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config).eval()


def test_answers_follow_the_scene():
    config = SyntheticConfig(num_frames=32)
    data = SyntheticVideoQA(config, 40, seed=1, question_types=tuple(QUESTIONS), late_tone=True)
    seen = set()
    for index in range(40):
        clip = data.clips.render_clip(index)
        scene, truth = clip.scene, answers(config, clip)
        flashes = len(scene.event_frames)
        assert truth["count"] == ("one", "two", "three")[flashes - 1]
        assert truth["sync"] == ("yes" if scene.event_frames == scene.tone_frames[:flashes] else "no")
        if truth["order"] != "both":
            first = "flash" if scene.event_frames[0] < scene.tone_frames[0] else "tone"
            assert truth["order"] == first
        late_slot = scene.tone_frames[-1] // config.slot_frames
        assert late_slot >= config.num_slots * 3 // 4  # the extra tone is in a late chunk
        assert all(frame // config.slot_frames < late_slot for frame in scene.tone_frames[:-1])
        assert truth["caption"] == clip.caption and truth["shape"] in clip.caption
        seen.add(truth["count"])
    assert seen == {"one", "two", "three"}


def test_samples_carry_prompt_answer_and_type():
    config = SyntheticConfig(num_frames=16)
    data = SyntheticVideoQA(config, 12, seed=2, question_types=("shape", "count"))
    for index in range(12):
        sample = data[index]
        kind, prompt, answer = data.question(index)
        tokens = sample["text"].tolist()
        length = int(sample["prompt_length"])
        assert bytes(tokens[1:length]).decode() == prompt == QUESTIONS[kind]
        assert bytes(tokens[length:length + len(answer)]).decode() == answer
        assert QUESTION_TYPES[int(sample["question_type"])] == kind
        assert sample["label"] == data.clips.labels[index]  # the clip's class, for the class term
    assert set(data.labels) == {QUESTION_TYPES.index("shape"), QUESTION_TYPES.index("count")}
    with pytest.raises(ValueError, match="question types"):
        parse_question_types("shape, colour")


def test_prompts_are_masked_out_of_the_loss():
    batch = qa_batch()
    decoder = model().text_decoder
    context = torch.randn(len(batch["text"]), 8, MODEL.width)
    losses, has_text = decoder.batch_loss(batch, context)
    logits = decoder(batch["text"][:, :-1], context)
    for row in range(len(losses)):
        start, tokens = int(batch["prompt_length"][row]), batch["text"][row]
        end = int((tokens == decoder.tokenizer.eos_id).nonzero()[0])
        # targets are the answer and its EOS only: positions start-1 .. end-1 predict them
        expected = F.cross_entropy(logits[row, start - 1:end], tokens[start:end + 1])
        torch.testing.assert_close(losses[row], expected, rtol=1e-5, atol=1e-6)
    assert bool(has_text.all())
    # Without the prompt lengths every token is a target: a different (larger) loss.
    unmasked, _ = decoder.loss_per_sample(batch["text"], context)
    assert not torch.allclose(unmasked, losses)


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}, {"num_beams": 2, "length_penalty": 0.0},
                                     {"temperature": 1.0, "top_k": 20}])
def test_kv_cache_generation_equals_generation_without_it(options):
    batch = qa_batch(5)
    decoder = model(1).text_decoder
    context = torch.randn(5, 8, MODEL.width)
    runs = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(3)
        runs.append(generate_ids(decoder, context, batch["text"], batch["prompt_length"],
                                 max_new_tokens=12, generator=generator, use_cache=use_cache,
                                 **options))
    assert runs[0].shape[1] >= 1
    assert torch.equal(runs[0], runs[1])
    if "temperature" in options:
        return
    # batched with ragged prompts = each sample alone
    alone = [generate_ids(decoder, context[i:i + 1], batch["text"][i:i + 1],
                          batch["prompt_length"][i:i + 1], max_new_tokens=12, **options)
             for i in range(5)]
    for i, row in enumerate(alone):
        width = row.shape[1]
        assert torch.equal(runs[0][i, :width], row[0])


def test_cached_logits_equal_the_full_pass():
    decoder = model(2).text_decoder
    from fedmirasol.models.kv_cache import DecoderCache

    tokens = torch.randint(0, 256, (2, 9))
    context = torch.randn(2, 8, MODEL.width)
    full = decoder(tokens, context)
    cache = DecoderCache.empty(decoder.depth)
    positions = torch.arange(9)[None].expand(2, 9)
    step = [decoder(tokens[:, :4], context, positions=positions[:, :4],
                    mask=torch.ones(2, 1, 4, 4, dtype=torch.bool).tril(), cache=cache)]
    for t in range(4, 9):
        step.append(decoder(tokens[:, t:t + 1], context, positions=positions[:, t:t + 1],
                            mask=torch.ones(2, 1, 1, t + 1, dtype=torch.bool), cache=cache))
    torch.testing.assert_close(torch.cat(step, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 9


def test_a_trained_answer_is_generated_greedy_and_by_beam_search():
    """Teach the decoder one answer per question on fixed latents: generation returns it."""
    torch.manual_seed(0)
    decoder = model(0, MODEL.replace(text_depth=1)).text_decoder
    batch = qa_batch(6, types=("shape", "sync", "count", "order"))
    context = torch.randn(6, 8, MODEL.width)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        decoder.batch_loss(batch, context)[0].mean().backward()
        optimizer.step()
    expected = [decoder.tokenizer.decode(row[int(p):]) for row, p in
                zip(batch["text"], batch["prompt_length"])]
    for options in ({}, {"num_beams": 3}):
        assert decoder.generate(context, batch["text"], batch["prompt_length"], **options) == expected


def test_metrics_equal_the_libraries_on_known_strings():
    import sacrebleu
    from pycocoevalcap.cider.cider import Cider

    references = ["a red disc, high tones, in sync", "a blue cross, low tones, off beat",
                  "an orange disc, low tones, in sync", "a green cross, high tones, off beat"]
    predictions = ["a red disc, high tones, in sync", "a blue disc, low tones, off beat",
                   "an orange disc, high tones", "a green cross high tones off beat"]
    plain_refs = [normalize(r) for r in references]
    plain_preds = [normalize(p) for p in predictions]
    assert plain_refs[0] == "a red disc high tones in sync"
    library_cider, _ = Cider().compute_score({i: [r] for i, r in enumerate(plain_refs)},
                                             {i: [p] for i, p in enumerate(plain_preds)})
    assert cider(predictions, references) == pytest.approx(float(library_cider))
    library_bleu = sacrebleu.corpus_bleu(plain_preds, [plain_refs]).score
    assert bleu4(predictions, references) == pytest.approx(library_bleu)
    assert bleu4(references, references) == pytest.approx(100.0)
    assert 0 < cider(predictions, references) < cider(references, references)
    assert exact_match(" Two", "two") and exact_match("the flash.", "the flash")
    assert not exact_match("two flashes", "two")
    with pytest.raises(ValueError, match="as many"):
        bleu4(["a"], [])


def test_evaluate_scores_each_question_type():
    batch = qa_batch(12, types=("caption", "shape", "sync"))
    result = evaluate(model(), [batch])
    kinds = [QUESTION_TYPES[i] for i in batch["question_type"].tolist()]
    assert result["n_questions"] == sum(k != "caption" for k in kinds)
    assert result["n_caption"] == kinds.count("caption")
    for kind in ("shape", "sync"):
        assert result[f"n_{kind}"] == kinds.count(kind) and 0 <= result[f"em_{kind}"] <= 1
    assert {"cider", "bleu4", "text_loss"} <= set(result)
    assert result["num_examples"] == 12  # the clips' class accuracy beside the text scores
    unlabelled = dict(batch, label=torch.full_like(batch["label"], -1))
    text_only = evaluate(model(), [unlabelled])
    assert text_only["accuracy"] == text_only["exact_match"] == result["exact_match"]
    assert text_only["loss"] == pytest.approx(result["text_loss"])


def test_dp_per_sample_gradients_of_the_qa_loss_equal_single_sample_ones():
    net = model(0)
    net.train()
    batch = qa_batch(4)
    assert len(set(batch["prompt_length"].tolist())) > 1  # prompts of different lengths
    objective = ExpandedWeightsObjective(net)
    try:
        objective(batch).sum().backward()
        per_sample = {name: p.grad_sample.clone() for name, p in net.named_parameters()
                      if getattr(p, "grad_sample", None) is not None}
    finally:
        objective.close()
    assert any(name.startswith("text_decoder.") for name in per_sample)
    params = dict(net.named_parameters())
    for index in range(4):
        single = {key: value[index:index + 1] for key, value in batch.items()}
        loss = per_sample_loss(net, single, net(single)).sum()
        names = list(per_sample)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        for name, grad in zip(names, grads):
            expected = torch.zeros_like(params[name]) if grad is None else grad
            torch.testing.assert_close(per_sample[name][index], expected, rtol=1e-4, atol=1e-6,
                                       msg=name)


def test_late_fusion_answers_through_its_own_decoder():
    config = get_config("latefusion-tiny", num_frames=8, text_weight=1.0)
    late = model(0, config)
    batch = qa_batch(4)
    assert late(batch).latents.shape == (4, 2, config.width)  # the two pooled features
    result = evaluate(late, [batch])
    assert result["n_questions"] + result.get("n_caption", 0) == 4
    assert len(late.generate(batch, max_new_tokens=4)) == 4
    assert not hasattr(model(0, get_config("latefusion-tiny")), "text_decoder")
