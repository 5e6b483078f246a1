/* wsgate.js — browser client for wsgate (placeholder being replaced by the full client). */
