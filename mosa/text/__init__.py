"""Text to token ids for every layer above the models: the checkpoint's tokenizer, chat-templated
prompt encoding (``prompts``) and the prompt-plus-masks canvas a sampler denoises (``canvas``).
Sampling, alignment and evaluation import it; it imports nothing of theirs."""
