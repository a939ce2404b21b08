"""Reference decoding in PyTorch: batched greedy and batched beam search.

The runtime (capbatch/decoding.py, numpy over ONNX) must reproduce these token
for token, so the rules are spelled out in docs/decoding.md and kept simple:

* log-probabilities are log_softmax of the step logits, in float32;
* greedy takes the first index of the maximum;
* beam search ranks candidates by summed log-prob, ties by lower flat index
  (stable sort); a candidate ending in <end> leaves the beam, which shrinks, so
  beam size 1 is exactly greedy; at max_len the live hypotheses are finished as
  they are; the winner has the best mean log-prob per generated token;
* tokens exclude <start> and <end>; `score` is the sum of the log-probs of all
  generated tokens (<end> included when generated); `steps` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import EncoderDecoder


@dataclass
class Hypothesis:
    tokens: list[int]  # caption ids, no <start>/<end>
    token_logprobs: list[float]  # one per generated token, <end> included when generated
    alphas: torch.Tensor  # (steps, L)
    score: float  # sum(token_logprobs)

    @property
    def steps(self) -> int:
        return len(self.token_logprobs)

    @property
    def mean_logprob(self) -> float:
        return self.score / max(1, self.steps)


def _step_logprobs(model: EncoderDecoder, tokens, h, c, features, projected):
    logits, h, c, alpha = model.decoder.step(tokens, h, c, features, projected)
    return torch.log_softmax(logits.float(), dim=-1), h, c, alpha


@torch.inference_mode()
def greedy_decode(model: EncoderDecoder, features: torch.Tensor, max_len: int | None = None):
    """features (B, L, D) -> one Hypothesis per image."""
    config = model.config
    max_len = max_len or config.max_len
    batch = features.shape[0]
    projected, h, c = model.decoder.init_state(features)
    tokens = torch.full((batch,), config.start_id, dtype=torch.long, device=features.device)
    out_tokens: list[list[int]] = [[] for _ in range(batch)]
    out_logprobs: list[list[float]] = [[] for _ in range(batch)]
    out_alphas: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    active = torch.arange(batch, device=features.device)  # rows still decoding
    for _ in range(max_len):
        logprobs, h, c, alpha = _step_logprobs(model, tokens, h, c, features, projected)
        best_logprob, best = logprobs.max(dim=-1)  # first index of the max
        still = []
        for row, image in enumerate(active.tolist()):
            token = int(best[row])
            out_logprobs[image].append(float(best_logprob[row]))
            out_alphas[image].append(alpha[row].detach().cpu())
            if token == config.end_id:
                continue
            out_tokens[image].append(token)
            still.append(row)
        if not still:
            break
        # Finished rows leave the batch: later steps run only on live rows.
        keep = torch.tensor(still, dtype=torch.long, device=features.device)
        active, tokens = active[keep], best[keep]
        h, c, features, projected = h[keep], c[keep], features[keep], projected[keep]
    return [
        Hypothesis(out_tokens[i], out_logprobs[i], torch.stack(out_alphas[i]), sum(out_logprobs[i]))
        for i in range(batch)
    ]


@torch.inference_mode()
def beam_search(
    model: EncoderDecoder,
    features: torch.Tensor,
    beam_size: int = 3,
    max_len: int | None = None,
) -> list[list[Hypothesis]]:
    """features (B, L, D) -> per image, its finished hypotheses best first
    (ranked by mean log-prob per generated token)."""
    if beam_size < 1:
        raise ValueError("beam_size must be >= 1")
    config = model.config
    max_len = max_len or config.max_len
    results = []
    projected_all, h_all, c_all = model.decoder.init_state(features)
    # Images are independent: each keeps its own shrinking beam. Rows of all
    # images' live beams are stacked into one batch per step.
    beams = []  # per image: list of (tokens, logprobs, alphas, score)
    for _ in range(features.shape[0]):
        beams.append([([], [], [], 0.0)])
    finished: list[list[tuple]] = [[] for _ in range(features.shape[0])]
    states = [(h_all[i : i + 1], c_all[i : i + 1]) for i in range(features.shape[0])]
    last_tokens = [torch.full((1,), config.start_id, dtype=torch.long) for _ in beams]
    for _ in range(max_len):
        live = [i for i, b in enumerate(beams) if b]
        if not live:
            break
        counts = [len(beams[i]) for i in live]
        index = torch.tensor([i for i, n in zip(live, counts) for _ in range(n)], dtype=torch.long)
        tokens = torch.cat([last_tokens[i] for i in live]).to(features.device)
        h = torch.cat([states[i][0] for i in live])
        c = torch.cat([states[i][1] for i in live])
        logprobs, h, c, alpha = _step_logprobs(
            model, tokens, h, c, features[index], projected_all[index]
        )
        offset = 0
        for i, n in zip(live, counts):
            rows = slice(offset, offset + n)
            offset += n
            beam = beams[i]
            width = beam_size - len(finished[i])
            base = torch.tensor([b[3] for b in beam], dtype=torch.float32, device=logprobs.device)
            total = (base.unsqueeze(1) + logprobs[rows]).flatten()  # (n * V,)
            order = torch.sort(total, descending=True, stable=True).indices[:width]
            vocab = logprobs.shape[1]
            new_beam, keep_rows, next_tokens = [], [], []
            for flat in order.tolist():
                parent, token = divmod(flat, vocab)
                prev_tokens, prev_lp, prev_alpha, _ = beam[parent]
                lp = float(logprobs[rows][parent, token])
                hyp = (
                    prev_tokens + ([] if token == config.end_id else [token]),
                    prev_lp + [lp],
                    prev_alpha + [alpha[rows][parent].detach().cpu()],
                    float(total[flat]),
                )
                if token == config.end_id:
                    finished[i].append(hyp)
                else:
                    new_beam.append(hyp)
                    keep_rows.append(parent)
                    next_tokens.append(token)
            beams[i] = new_beam
            if new_beam:
                keep = torch.tensor(keep_rows, dtype=torch.long)
                states[i] = (h[rows][keep], c[rows][keep])
                last_tokens[i] = torch.tensor(next_tokens, dtype=torch.long)
    for i in range(features.shape[0]):
        pool = finished[i] + beams[i]  # live ones at max_len finish as they are
        ranked = sorted(
            range(len(pool)), key=lambda k: -(pool[k][3] / max(1, len(pool[k][1])))
        )  # sorted() is stable: equal means keep pool order
        results.append(
            [
                Hypothesis(pool[k][0], pool[k][1], torch.stack(pool[k][2]), pool[k][3])
                for k in ranked
            ]
        )
    return results
