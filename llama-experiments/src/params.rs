//! `llama params`: parameter counts and training FLOPs of a preset or config file, without allocating.

use serde::Serialize;

use llama_model::LlamaConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamsReport {
    pub params: u64,
    pub non_embedding_params: u64,
    pub flops_per_token: u64,
}

impl ParamsReport {
    pub fn of(config: &LlamaConfig) -> Self {
        let counts = config.param_counts();
        Self {
            params: counts.total,
            non_embedding_params: counts.non_embedding,
            flops_per_token: config.flops_per_token(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain numbers serialise")
    }

    pub fn to_text(&self, name: &str, config: &LlamaConfig) -> String {
        format!(
            "{name}: dim {} · {} layers · {} heads ({} kv) · ffn {} · vocab {} · context {}\n\
             parameters            {:>16} ({})\n\
             non-embedding params  {:>16} ({})\n\
             training FLOPs/token  {:>16} ({}; 6·(N + V·d) + 12·L·d·T)",
            config.dim,
            config.n_layers,
            config.n_heads,
            config.kv_heads(),
            config.ffn_hidden(),
            config.vocab_size,
            config.max_seq_len,
            group(self.params),
            human(self.params as f64),
            group(self.non_embedding_params),
            human(self.non_embedding_params as f64),
            group(self.flops_per_token),
            human(self.flops_per_token as f64),
        )
    }
}

/// `6738415616` → `6,738,415,616`.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human(x: f64) -> String {
    for (div, unit) in [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")] {
        if x >= div {
            return format!("{:.2}{unit}", x / div);
        }
    }
    format!("{x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits() {
        assert_eq!(group(6_738_415_616), "6,738,415,616");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
    }
}
