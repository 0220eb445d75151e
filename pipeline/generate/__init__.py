"""Generate: a trait's contrastive data from its name and a description, as the persona-vectors
pipeline makes it, locally. An author model writes opposite system prompts, questions and a
judge rubric (``authoring``, templates in ``prompts``); the target model answers every question
under both personas (``chat``: a local model or any OpenAI-compatible server); a judge rates each
answer for the trait and for coherence (``judging``); what passes the thresholds becomes a trait
folder (``folder``) that ``ingest`` reads. Every model call is cached by content (``cache``), so
a rerun calls nothing and an interrupted run resumes; ``run`` ties it together. Imports
``model``, ``runtime``, ``store``; no other stage."""
