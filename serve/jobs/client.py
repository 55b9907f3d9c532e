"""Getting (or creating) the detached queue actor from a gateway replica or a test."""

from __future__ import annotations

import ray

from serve.jobs.queue_actor import JobQueue


# Ray's own resource of the head node (every head has it, local or KubeRay).
HEAD_NODE = {"node:__internal_head__": 0.001}


def queue_settings(config) -> dict:
    """The plain-data settings the queue actor is built from."""
    return {
        "app_name": config.app_name,
        "journal_url": config.resolved_journal_url,
        "max_dispatch": config.queue.max_dispatch,
        "max_attempts": config.queue.max_attempts,
        "keep_completed_in_memory": config.queue.keep_completed_in_memory,
        "fetch": config.fetch.model_dump(),
        "webhooks": config.webhooks.model_dump(),
    }


def get_queue_actor(config, placement: dict | None = None):
    """The named detached actor; created on first use, restarted by Ray if it dies.

    `placement` (actor options) replaces the default, the head node: tests place it elsewhere.
    """
    return (
        ray.remote(JobQueue)
        .options(
            name=config.queue.actor_name,
            namespace=config.queue.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            # Calls made while it restarts are retried; submit is idempotent on request_id.
            max_task_retries=-1,
            max_concurrency=10_000,
            num_cpus=0,
            # On the head node: a worker node may be scaled away or die (taking the actor with it
            # while its requests wait), and the default SQLite journal is a file of the node it runs on.
            **({"resources": HEAD_NODE} if placement is None else placement),
        )
        .remote(queue_settings(config))
    )
