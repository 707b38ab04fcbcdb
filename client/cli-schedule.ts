/** `schedule create|list|describe|pause|unpause|trigger|delete`: nightly retraining on Temporal Schedules. */
import type { Command } from 'commander';

export function registerScheduleCommands(_program: Command): void {
  // work in progress
}
