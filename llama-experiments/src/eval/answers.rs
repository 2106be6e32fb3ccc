//! Reading answers out of generated text: exact match after SQuAD-style normalisation
//! (NaturalQuestions, TriviaQA), the final number (GSM8K), and the unbiased pass@k estimator
//! (HumanEval).

/// Lower-case, punctuation removed, the articles a/an/the removed, whitespace collapsed (the
/// normalisation of the SQuAD and TriviaQA evaluation scripts).
pub fn normalise_answer(text: &str) -> String {
    let lower = text.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation() && !matches!(c, '‘' | '’' | '“' | '”' | '´'))
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first line of a generated answer (the model's answer before it starts another question).
pub fn first_line(generated: &str) -> &str {
    let t = generated.trim_start();
    t.split('\n').next().unwrap_or("").trim()
}

/// Exact match of the generation's first line against any gold answer, both normalised.
pub fn exact_match(generated: &str, golds: &[String]) -> bool {
    let g = normalise_answer(first_line(generated));
    golds.iter().any(|a| normalise_answer(a) == g)
}

/// The number a GSM8K solution ends with: after `####` when present, else the last number in
/// the text; commas, `$` and trailing zeros of decimals do not count.
pub fn final_number(text: &str) -> Option<f64> {
    let tail = match text.rfind("####") {
        Some(i) => &text[i + 4..],
        None => text,
    };
    let numbers = numbers_in(tail);
    let pick = if text.contains("####") {
        numbers.first()
    } else {
        numbers.last()
    };
    pick.copied()
}

fn numbers_in(text: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            || (chars[i] == '-' && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()));
        if !starts {
            i += 1;
            continue;
        }
        let mut s = String::new();
        if chars[i] == '-' {
            s.push('-');
            i += 1;
        }
        while i < chars.len() {
            let c = chars[i];
            let digit_follows = chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
            if c.is_ascii_digit() {
                s.push(c);
            } else if c == ',' && digit_follows {
                // thousands separator
            } else if c == '.' && digit_follows {
                s.push(c);
            } else {
                break;
            }
            i += 1;
        }
        if let Ok(v) = s.parse::<f64>() {
            out.push(v);
        }
    }
    out
}

/// Whether the generated solution's final number equals the reference solution's.
pub fn gsm8k_correct(generated: &str, reference: &str) -> bool {
    match (final_number(generated), final_number(reference)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        _ => false,
    }
}

/// The unbiased estimator of pass@k from `n` samples of which `c` pass (Chen et al., 2021):
/// `1 − C(n − c, k) / C(n, k)`, computed as a product to stay exact for large n.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(
        k >= 1 && k <= n && c <= n,
        "pass@{k} needs 1 ≤ k ≤ n = {n} and c = {c} ≤ n"
    );
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_normalises_like_squad() {
        assert_eq!(normalise_answer("The  Beatles!"), "beatles");
        assert_eq!(normalise_answer("an Apple, a day"), "apple day");
        assert!(exact_match(
            " the Eiffel Tower.\nQ: next",
            &["Eiffel Tower".into()]
        ));
        assert!(!exact_match("Eiffel", &["Eiffel Tower".into()]));
        assert!(exact_match(
            "14 December 1972",
            &[
                "1972".into(),
                "14 December 1972 UTC".into(),
                "14 december 1972".into()
            ]
        ));
    }

    #[test]
    fn gsm8k_final_numbers() {
        let gold = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18";
        assert_eq!(final_number(gold), Some(18.0));
        assert!(gsm8k_correct(
            "She makes 9 * 2 = 18 dollars. The answer is 18.",
            gold
        ));
        assert!(gsm8k_correct("#### 18", gold));
        assert!(!gsm8k_correct("The answer is 17.", gold));
        assert_eq!(final_number("costs $1,234.50 in total"), Some(1234.5));
        assert_eq!(final_number("it fell by -3 degrees"), Some(-3.0));
        assert_eq!(final_number("no digits"), None);
        assert!(!gsm8k_correct("no digits", gold));
    }

    #[test]
    fn pass_at_k_is_the_unbiased_estimator() {
        // Brute force: the probability that k draws without replacement include a pass.
        fn choose(n: u64, k: u64) -> f64 {
            (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
        }
        for (n, c, k) in [
            (10, 3, 1),
            (10, 3, 5),
            (20, 0, 10),
            (20, 20, 1),
            (200, 13, 100),
            (5, 1, 5),
        ] {
            let want = 1.0 - choose((n - c) as u64, k as u64) / choose(n as u64, k as u64);
            assert!((pass_at_k(n, c, k) - want).abs() < 1e-9, "{n} {c} {k}");
        }
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-15);
    }
}
