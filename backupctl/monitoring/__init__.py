"""Is every source protected: the gathered facts (status), their judgement (check), metrics and webhooks."""
