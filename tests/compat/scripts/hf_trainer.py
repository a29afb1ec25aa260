"""An unchanged W&B user script: Hugging Face Trainer with report_to="wandb" (tests/compat)."""
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments


class Tiny(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(n)
        self.ids = torch.randint(5, 100, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] > 50).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=16, num_labels=2)
model = BertForSequenceClassification(config)
args = TrainingArguments(output_dir=sys.argv[1], report_to="wandb", run_name="tiny-bert", logging_steps=2,
                         eval_strategy="epoch", num_train_epochs=2, per_device_train_batch_size=4,
                         learning_rate=1e-3, save_strategy="no", use_cpu=True, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=Tiny(16), eval_dataset=Tiny(8))
trainer.train()
print("TRAINED", flush=True)
