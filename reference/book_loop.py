"""A plain copy of the book's chapter-5 training code (``GPTDatasetV1`` to ``train_model_simple``), for the tests
and benchmarks/bench_book.py.

It shares no code with gptlite's training package: it drives :class:`reference.book_gpt.BookGPTModel` (or any
module returning logits) exactly as the book's listing does, so gptlite's book-exact mode can be compared
against it number for number.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from reference.book_gpt import BookGPTModel


class GPTDatasetV1(Dataset):
    def __init__(self, txt, tokenizer, max_length, stride):
        self.input_ids = []
        self.target_ids = []
        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        for i in range(0, len(token_ids) - max_length, stride):
            input_chunk = token_ids[i : i + max_length]
            target_chunk = token_ids[i + 1 : i + max_length + 1]
            self.input_ids.append(torch.tensor(input_chunk))
            self.target_ids.append(torch.tensor(target_chunk))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


def create_dataloader_v1(txt, tokenizer, batch_size=4, max_length=256, stride=128, shuffle=True, drop_last=True,
                         num_workers=0):
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers)


def calc_loss_batch(input_batch, target_batch, model, device):
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device, num_batches=None):
    total_loss = 0.0
    if len(data_loader) == 0:
        return float("nan")
    elif num_batches is None:
        num_batches = len(data_loader)
    else:
        num_batches = min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i < num_batches:
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            total_loss += loss.item()
        else:
            break
    return total_loss / num_batches


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_text_simple(model, idx, max_new_tokens, context_size):
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits = model(idx_cond)
        logits = logits[:, -1, :]
        idx_next = torch.argmax(logits, dim=-1, keepdim=True)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def generate_and_print_sample(model, tokenizer, device, start_context, context_size, max_new_tokens=50):
    model.eval()
    encoded = torch.tensor(tokenizer.encode(start_context)).unsqueeze(0).to(device)
    with torch.no_grad():
        token_ids = generate_text_simple(model=model, idx=encoded, max_new_tokens=max_new_tokens,
                                         context_size=context_size)
    decoded_text = tokenizer.decode(token_ids.squeeze(0).tolist())
    model.train()
    return decoded_text.replace("\n", " ")


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                       start_context, tokenizer, context_size, sample_tokens=50):
    train_losses, val_losses, track_tokens_seen, step_losses, samples = [], [], [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):  # noqa: B007 (the book prints it in its evaluation line)
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            step_losses.append(loss.item())
            tokens_seen += input_batch.numel()
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
        samples.append(generate_and_print_sample(model, tokenizer, device, start_context, context_size, sample_tokens))
    return train_losses, val_losses, track_tokens_seen, step_losses, samples


def run_book_chapter5(text, cfg, tokenizer, num_epochs=10, batch_size=2, eval_freq=5, eval_iter=1, lr=0.0004,
                      weight_decay=0.1, seed=123, start_context="Every effort moves you", model_factory=None,
                      sample_tokens=50):
    """The chapter's listing: split at 90% of the characters, loaders, ``torch.manual_seed``, model, AdamW, train."""
    train_ratio = 0.90
    split_idx = int(train_ratio * len(text))
    train_data, val_data = text[:split_idx], text[split_idx:]
    torch.manual_seed(seed)
    train_loader = create_dataloader_v1(train_data, tokenizer, batch_size=batch_size, max_length=cfg["context_length"],
                                        stride=cfg["context_length"], drop_last=True, shuffle=True, num_workers=0)
    val_loader = create_dataloader_v1(val_data, tokenizer, batch_size=batch_size, max_length=cfg["context_length"],
                                      stride=cfg["context_length"], drop_last=False, shuffle=False, num_workers=0)
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = (model_factory or BookGPTModel)(cfg)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs=num_epochs,
                              eval_freq=eval_freq, eval_iter=eval_iter, start_context=start_context,
                              tokenizer=tokenizer, context_size=cfg["context_length"], sample_tokens=sample_tokens)


# -- appendix D, section D.4 --------------------------------------------------------------------------------------
# The listing as the book printed it (the repository's notebook before its fixes): the learning rate set before
# each step from the warmup/cosine formula, clipping only when global_step > warmup_steps, and AdamW built without
# lr=, so peak_lr is read back from the optimizer as AdamW's default 1e-3 (the text's 5e-4 is never passed in).


def train_model(model, train_loader, val_loader, optimizer, device, n_epochs, eval_freq, eval_iter, start_context,
                tokenizer, warmup_steps, context_size, initial_lr=3e-05, min_lr=1e-6, sample_tokens=50, log=None,
                max_norm=1.0):
    train_losses, val_losses, track_tokens_seen, track_lrs, step_losses, samples = [], [], [], [], [], []
    tokens_seen, global_step = 0, -1
    peak_lr = optimizer.param_groups[0]["lr"]
    total_training_steps = len(train_loader) * n_epochs
    lr_increment = (peak_lr - initial_lr) / warmup_steps
    for epoch in range(n_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            global_step += 1
            if global_step < warmup_steps:
                lr = initial_lr + global_step * lr_increment
            else:
                progress = (global_step - warmup_steps) / (total_training_steps - warmup_steps)
                lr = min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            track_lrs.append(lr)
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            if global_step > warmup_steps:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
            optimizer.step()
            step_losses.append(loss.item())
            tokens_seen += input_batch.numel()
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                if log is not None:
                    log(f"Ep {epoch+1} (Iter {global_step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        samples.append(generate_and_print_sample(model, tokenizer, device, start_context, context_size, sample_tokens))
        if log is not None:
            log(samples[-1])
    return train_losses, val_losses, track_tokens_seen, track_lrs, step_losses, samples


def run_book_appendix_d(text, cfg, tokenizer, n_epochs=15, batch_size=2, eval_freq=5, eval_iter=1, seed=123,
                        start_context="Every effort moves you", model_factory=None, sample_tokens=50, log=None,
                        max_norm=1.0):
    """Section D.4 after the chapter's loaders: ``torch.manual_seed``, model, ``AdamW`` without ``lr``, train.

    ``max_norm`` is the listing's 1.0; the tests on tiny models lower it, whose gradients stay below 1.
    """
    train_ratio = 0.90
    split_idx = int(train_ratio * len(text))
    torch.manual_seed(seed)
    train_loader = create_dataloader_v1(text[:split_idx], tokenizer, batch_size=batch_size,
                                        max_length=cfg["context_length"], stride=cfg["context_length"],
                                        drop_last=True, shuffle=True, num_workers=0)
    val_loader = create_dataloader_v1(text[split_idx:], tokenizer, batch_size=batch_size,
                                      max_length=cfg["context_length"], stride=cfg["context_length"],
                                      drop_last=False, shuffle=False, num_workers=0)
    total_steps = len(train_loader) * n_epochs
    warmup_steps = int(0.2 * total_steps)  # 20% warmup
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = (model_factory or BookGPTModel)(cfg)
    model.to(device)
    peak_lr = 5e-4  # noqa: F841 (the book's text sets it; the listing never passes it to the optimizer)
    optimizer = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
    return train_model(model, train_loader, val_loader, optimizer, device, n_epochs=n_epochs, eval_freq=eval_freq,
                       eval_iter=eval_iter, start_context=start_context, tokenizer=tokenizer,
                       warmup_steps=warmup_steps, context_size=cfg["context_length"], initial_lr=1e-5, min_lr=1e-5,
                       sample_tokens=sample_tokens, log=log, max_norm=max_norm)
