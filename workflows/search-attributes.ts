/** Search attributes Refinery sets; `refinery stack start` registers them (Keyword type). */
export const SEARCH_ATTRIBUTES = {
  pipeline: 'RefineryPipeline',
  state: 'RefineryState',
} as const;
