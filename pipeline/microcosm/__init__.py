"""The maze microcosm: test an objective on one CPU in minutes, through the same pipeline.

    echo-rl microcosm supervised|rl|probe|env_only|sweep|prior [--config configs/microcosm/default.yaml] [key=value ...]

Where it sits: maze tasks (``pipeline/tasks/maze.py``) → the real rollout loop with the
``maze`` sandbox and ``PlainFormat`` → Trajectories → the real losses and Megatron learner
(gloo) → the HF engine via the same weight sync. Only the task, the terminal and the text
protocol differ from ``echo-rl train``; each run is small enough to repeat over seeds.

Experiments (each over ``seeds``; each writes ``OUT/<experiment>/{curves.csv, curves.png,
summary.md}``):

- ``supervised``: imitate expert trajectories (``sup_expert``), loss on ACTION tokens only vs
  ACTION + ``sup_env_coef`` × OUTPUT tokens; solve rate on fresh mazes vs step.
- ``rl``: GRPO vs ECHO (each ``env_coefs``) from one warm start per seed (imitation of
  random-walk trajectories, identical for all arms), the same fresh mazes per step for
  every arm; solve rate vs step; steps for ECHO to reach GRPO's best solve rate.
- ``probe``: CE on OUTPUT tokens of held-out BFS-expert trajectories at each evaluation
  of the GRPO and ECHO runs (the world-model probe).
- ``env_only``: from each seed's final ECHO checkpoint, continue with the environment
  loss only (no reward) on a maze size never trained on; solve rate before/after.
- ``sweep``: GRPO alone at each of ``sweep_lrs`` (how ``rl_lr`` is chosen, the same for
  every arm); each rate's gain over the start with its interval.
- ``prior``: both imitation starts (ACTION only, ACTION + OUTPUT), then the same RL arms
  from each: is imitation on the terminal's answers a substitute for ECHO?

``rl`` and ``prior`` report the speed-up (``stats.speedup_ci``): GRPO's steps ÷ ECHO's steps
to reach GRPO's start + f × its best gain (``speed_fractions``), with its interval.

Modules, each importing only those listed before it: ``stats`` (confidence intervals),
``world`` (the config, the maze world, the agent), ``arms`` (imitation, warm start,
GRPO/ECHO, env_only), ``report`` (tables and plots), ``run`` (the experiments, the CLI). Runs are cached under ``OUT/runs/<arm>-seed<k>-<hash>`` (the hash covers the config), so
``probe`` and ``env_only`` reuse what ``rl`` trained.
"""
