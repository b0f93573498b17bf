"""Batched decoding for the text decoder: greedy, sampled (temperature, top-k) or beam search,
with a KV cache.

Prompts of different lengths are left-aligned: row b is ``PAD .. PAD BOS prompt_b``, its
padding masked out of every attention and its positions counted from its own BOS, so each row
is decoded exactly as it would be alone. With the cache (`use_cache`, the default) the first
step runs the prompts and every later step only the newest token, attending to the cached keys
and values; without it every step reruns the whole sequence (the reference the cache is tested
against).
"""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.models.kv_cache import DecoderCache

TextDecoder = nn.Module  # a fedmirasol.models.text_decoder.TextDecoder (which imports this module)


def left_aligned_prompts(
    decoder: TextDecoder, batch_size: int, prompts: torch.Tensor | None,
    prompt_length: torch.Tensor | None, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``B x P`` prompt tokens ending in the last column, ``B`` left padding of each row).

    A row's prompt is its first `prompt_length` tokens (at least BOS)."""
    tokenizer = decoder.tokenizer
    if prompts is None or prompt_length is None:
        rows = torch.full((batch_size, 1), tokenizer.bos_id, dtype=torch.long, device=device)
        lengths = torch.ones(batch_size, dtype=torch.long, device=device)
    else:
        rows = prompts.to(device).clone()
        rows[:, 0] = tokenizer.bos_id  # a row without a prompt (or a caption) is BOS alone
        lengths = prompt_length.to(device).clamp(min=1)
    width = int(lengths.max())
    padding = width - lengths
    source = torch.arange(width, device=device)[None, :] - padding[:, None]  # B x P
    tokens = rows.gather(1, source.clamp(min=0))
    tokens = torch.where(source >= 0, tokens, torch.full_like(tokens, tokenizer.pad_id))
    return tokens, padding


def attention_mask(key_valid: torch.Tensor) -> torch.Tensor:
    """``B x 1 x L x L``: causal, padding keys masked (each position still sees itself)."""
    length = key_valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=key_valid.device).tril()
    itself = torch.eye(length, dtype=torch.bool, device=key_valid.device)
    return ((causal[None] & key_valid[:, None, :]) | itself[None])[:, None]


def choose(logits: torch.Tensor, temperature: float, top_k: int | None,
           generator: torch.Generator | None) -> torch.Tensor:
    """``B x vocab`` -> ``B`` next tokens: argmax at temperature 0, else sampled."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def beam_step(logits: torch.Tensor, scores: torch.Tensor, finished: torch.Tensor, eos_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One beam-search step over ``(B*K) x vocab`` logits and ``B x K`` summed log-probs.

    A finished beam's only continuation is EOS at no cost, so it keeps its score. Returns
    (``B*K`` next tokens, ``B*K`` rows to keep, ``B x K`` new scores)."""
    batch, beams = scores.shape
    log_probs = logits.log_softmax(dim=-1)
    vocab = log_probs.shape[1]
    done = torch.full((vocab,), float("-inf"), device=logits.device)
    done[eos_id] = 0.0
    log_probs = torch.where(finished[:, None], done[None], log_probs)
    candidates = (scores.reshape(-1, 1) + log_probs).reshape(batch, beams * vocab)
    scores, index = candidates.topk(beams, dim=1)
    beam, token = index // vocab, index % vocab
    keep = (torch.arange(batch, device=logits.device)[:, None] * beams + beam).reshape(-1)
    return token.reshape(-1), keep, scores


def generate(decoder: TextDecoder, context: torch.Tensor, prompts: torch.Tensor | None = None,
             prompt_length: torch.Tensor | None = None, **options) -> list[str]:
    """The text each sample's prompt continues into (`generate_ids`, decoded up to EOS)."""
    ids = generate_ids(decoder, context, prompts, prompt_length, **options)
    return [decoder.tokenizer.decode(row) for row in ids]


@torch.no_grad()
def generate_ids(
    decoder: TextDecoder,
    context: torch.Tensor,
    prompts: torch.Tensor | None = None,
    prompt_length: torch.Tensor | None = None,
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[str]:
    """``B x N`` generated token ids (after the prompt; EOS-filled once a row has ended), up to
    EOS or `max_new_tokens`.

    `num_beams` > 1: beam search, the best beam by summed log-probability / length **
    `length_penalty`; otherwise greedy (`temperature` 0) or sampling (optionally top-k)."""
    tokenizer = decoder.tokenizer
    device = context.device
    batch = context.shape[0]
    tokens, padding = left_aligned_prompts(decoder, batch, prompts, prompt_length, device)
    width = tokens.shape[1]
    room = decoder.max_len - int((width - padding).min())  # the shortest prompt's room
    if decoder.max_len - width < 1:
        raise ValueError(f"a prompt of {width} tokens leaves no room in max_text_len {decoder.max_len}")
    limit = min(max_new_tokens or decoder.max_len, room)
    beams = max(1, num_beams)
    if beams > 1:
        context = context.repeat_interleave(beams, dim=0)
        tokens, padding = tokens.repeat_interleave(beams, dim=0), padding.repeat_interleave(beams, dim=0)
    rows = tokens.shape[0]
    key_valid = torch.arange(width, device=device)[None, :] >= padding[:, None]  # (B*K) x P
    positions = (torch.arange(width, device=device)[None, :] - padding[:, None]).clamp(min=0)
    cache = DecoderCache.empty(decoder.depth) if use_cache else None
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    generated = torch.zeros(rows, dtype=torch.long, device=device)
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = float("-inf")  # all beams start as the same prompt: expand the first only
    step_tokens, step_positions = tokens, positions
    for step in range(limit):
        if cache is None:
            logits = decoder(tokens, context, positions=positions, mask=attention_mask(key_valid))
        else:
            mask = attention_mask(key_valid) if step == 0 else key_valid[:, None, None, :]
            logits = decoder(step_tokens, context, positions=step_positions, mask=mask, cache=cache)
        logits = logits[:, -1].float()
        logits[:, tokenizer.pad_id] = float("-inf")
        logits[:, tokenizer.bos_id] = float("-inf")
        # A row at its last position (max_text_len - 1) ends: EOS is its only continuation.
        full = positions[:, -1] >= decoder.max_len - 1
        logits[full] = torch.where(torch.arange(logits.shape[1], device=device) == tokenizer.eos_id,
                                   0.0, float("-inf"))
        if beams == 1:
            next_token = choose(logits, temperature, top_k, generator)
            next_token = torch.where(finished, tokenizer.eos_id, next_token)
        else:
            next_token, keep, scores = beam_step(logits, scores, finished, tokenizer.eos_id)
            tokens, positions, key_valid = tokens[keep], positions[keep], key_valid[keep]
            finished, generated = finished[keep], generated[keep]
            if cache is not None:
                cache.reorder(keep)
        generated += ~finished
        # an ended row's position stops at the last one (its outputs are never read)
        step_positions = (positions[:, -1:] + 1).clamp(max=decoder.max_len - 1)
        step_tokens = next_token[:, None]
        tokens = torch.cat([tokens, step_tokens], dim=1)
        positions = torch.cat([positions, step_positions], dim=1)
        key_valid = torch.cat([key_valid, torch.ones_like(finished)[:, None]], dim=1)
        finished |= next_token == tokenizer.eos_id
        if bool(finished.all()):
            break
    if beams > 1:
        normalized = scores / generated.view(batch, beams).clamp(min=1).float() ** length_penalty
        best = normalized.argmax(dim=1)
        tokens = tokens.view(batch, beams, -1)[torch.arange(batch, device=device), best]
    return tokens[:, width:]
