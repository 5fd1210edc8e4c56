"""From the data a user has to MISSRec-ready tables and training batches.

A source (`missrec_files`: the MISSRec/UniSRec folders; `atomic_files`: RecBole atomic files; `amazon_raw`: raw
Amazon 2018 reviews; `demo_data`: the seeded synthetic catalogue) yields a `DomainData` (`domain_data`); the
`datasets` builder (`builder`) turns it into Arrow tables, which `load_domain` / `mix_domains` (`loading`) return
as a `MultiModalDomain`. `feature_extraction` and `text_reencoding` compute item features with CLIP or a sentence
encoder; `collator` reads the tables into padded training batches. `python -m modeling_missrec.pipelines.data.build`
builds a domain from the command line.
"""

from .builder import SOURCES, MISSRecAmazon, MISSRecDomainConfig
from .collator import SequenceCollator, arrow_table, catalogue_features, catalogue_modalities, feature_matrix
from .demo_data import make_demo_domain
from .domain_data import DOWNSTREAM_DOMAINS, PRETRAINING_DOMAINS, SPLITS, DomainData, SequenceSplit, leave_one_out
from .feature_extraction import extract_catalogue_text_features, extract_image_features, extract_text_features
from .loading import MultiModalDomain, domain_statistics, load_domain, mix_domains
from .missrec_files import read_missrec_folder, write_missrec_folder
from .text_reencoding import reencode_text_features

__all__ = [
    "DOWNSTREAM_DOMAINS",
    "PRETRAINING_DOMAINS",
    "SOURCES",
    "SPLITS",
    "DomainData",
    "MISSRecAmazon",
    "MISSRecDomainConfig",
    "MultiModalDomain",
    "SequenceCollator",
    "SequenceSplit",
    "arrow_table",
    "catalogue_features",
    "catalogue_modalities",
    "domain_statistics",
    "extract_catalogue_text_features",
    "extract_image_features",
    "extract_text_features",
    "feature_matrix",
    "leave_one_out",
    "load_domain",
    "make_demo_domain",
    "mix_domains",
    "read_missrec_folder",
    "reencode_text_features",
    "write_missrec_folder",
]
