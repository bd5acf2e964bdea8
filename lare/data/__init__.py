"""The data: datasets and their sources (CUB, CUB-200-Paintings, CIFAR-100, DomainNet,
CIFAR-100-LT, one's own image folder), the synthetic world, bring-your-own embeddings, the
embedding cache, extraction into it, and seeded splits. Imports only from the core and the base."""
