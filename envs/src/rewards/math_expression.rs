//! Math expressions as models write them (plain or LaTeX), parsed and compared by value.
//!
//! Two expressions are equal when they denote the same value: exactly, as rationals, when both
//! are rational (`0.5` = `\frac{1}{2}`, but `0.3333` ≠ `1/3`); otherwise numerically to a
//! relative 1e-9 (`2\sqrt{3}` = `\sqrt{12}`, but `\pi` ≠ `3.14159`), with free variables
//! evaluated at fixed sample points (`x^2+2x+1` = `(x+1)^2`). Tuples compare element-wise, in
//! order. This follows the verdicts of `math-verify` 0.9.0 on its test vectors (see
//! `tests/fixtures/math_verify_vectors.json`).

use std::collections::BTreeSet;

/// Relative tolerance for comparing values that are not both exact rationals.
const RELATIVE_TOLERANCE: f64 = 1e-9;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A decimal literal, as an exact rational.
    Number(Ratio),
    /// A one-letter variable.
    Var(char),
    /// π.
    Pi,
    /// `-a`.
    Neg(Box<Expr>),
    /// `a + b`.
    Add(Box<Expr>, Box<Expr>),
    /// `a - b`.
    Sub(Box<Expr>, Box<Expr>),
    /// `a * b` (also `\cdot`, `\times`, juxtaposition).
    Mul(Box<Expr>, Box<Expr>),
    /// `a / b`, `\frac{a}{b}`.
    Div(Box<Expr>, Box<Expr>),
    /// `a ^ b`.
    Pow(Box<Expr>, Box<Expr>),
    /// `\sqrt[n]{a}` (`n` = 2 for a square root).
    Root(Box<Expr>, Box<Expr>),
    /// `a %` (= a / 100).
    Percent(Box<Expr>),
    /// `a!`.
    Factorial(Box<Expr>),
    /// `(a, b, ...)`: ordered.
    Tuple(Vec<Expr>),
}

/// An exact rational `num / den` in lowest terms, `den > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

impl Ratio {
    /// `num / den`, reduced; `None` when `den` is 0.
    pub fn new(num: i128, den: i128) -> Option<Self> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den).max(1);
        let sign = if den < 0 { -1 } else { 1 };
        Some(Self {
            num: sign * num / g,
            den: sign * den / g,
        })
    }

    fn integer(n: i128) -> Self {
        Self { num: n, den: 1 }
    }

    /// The value as a float.
    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    fn add(self, o: Self) -> Option<Self> {
        let num = self
            .num
            .checked_mul(o.den)?
            .checked_add(o.num.checked_mul(self.den)?)?;
        Self::new(num, self.den.checked_mul(o.den)?)
    }

    fn neg(self) -> Option<Self> {
        Some(Self {
            num: self.num.checked_neg()?,
            den: self.den,
        })
    }

    fn mul(self, o: Self) -> Option<Self> {
        Self::new(self.num.checked_mul(o.num)?, self.den.checked_mul(o.den)?)
    }

    fn recip(self) -> Option<Self> {
        Self::new(self.den, self.num)
    }

    fn as_integer(self) -> Option<i128> {
        (self.den == 1).then_some(self.num)
    }
}

fn exact_root(n: i128, k: u32) -> Option<i128> {
    if n < 0 {
        return (k % 2 == 1)
            .then(|| exact_root(-n, k).map(|r| -r))
            .flatten();
    }
    let guess = (n as f64).powf(1.0 / k as f64).round() as i128;
    (guess.saturating_sub(1)..=guess + 1).find(|r| r.checked_pow(k) == Some(n))
}

impl Expr {
    /// The exact value when the expression is rational and free of variables.
    pub fn exact(&self) -> Option<Ratio> {
        match self {
            Expr::Number(r) => Some(*r),
            Expr::Var(_) | Expr::Pi | Expr::Tuple(_) => None,
            Expr::Neg(a) => a.exact()?.neg(),
            Expr::Add(a, b) => a.exact()?.add(b.exact()?),
            Expr::Sub(a, b) => a.exact()?.add(b.exact()?.neg()?),
            Expr::Mul(a, b) => a.exact()?.mul(b.exact()?),
            Expr::Div(a, b) => a.exact()?.mul(b.exact()?.recip()?),
            Expr::Percent(a) => a.exact()?.mul(Ratio::new(1, 100)?),
            Expr::Pow(a, b) => {
                let base = a.exact()?;
                let e = b.exact()?.as_integer()?;
                if e.abs() > 128 {
                    return None;
                }
                let mut acc = Ratio::integer(1);
                for _ in 0..e.abs() {
                    acc = acc.mul(base)?;
                }
                if e < 0 { acc.recip() } else { Some(acc) }
            }
            Expr::Root(a, k) => {
                let r = a.exact()?;
                let k = u32::try_from(k.exact()?.as_integer()?).ok()?;
                if k == 0 {
                    return None;
                }
                Ratio::new(exact_root(r.num, k)?, exact_root(r.den, k)?)
            }
            Expr::Factorial(a) => {
                let n = a.exact()?.as_integer()?;
                if !(0..=30).contains(&n) {
                    return None;
                }
                Some(Ratio::integer((1..=n).product::<i128>().max(1)))
            }
        }
    }

    /// The value as a float with variables taken from `var`; NaN for tuples.
    pub fn eval(&self, var: &dyn Fn(char) -> f64) -> f64 {
        match self {
            Expr::Number(r) => r.to_f64(),
            Expr::Var(c) => var(*c),
            Expr::Pi => std::f64::consts::PI,
            Expr::Neg(a) => -a.eval(var),
            Expr::Add(a, b) => a.eval(var) + b.eval(var),
            Expr::Sub(a, b) => a.eval(var) - b.eval(var),
            Expr::Mul(a, b) => a.eval(var) * b.eval(var),
            Expr::Div(a, b) => a.eval(var) / b.eval(var),
            Expr::Pow(a, b) => a.eval(var).powf(b.eval(var)),
            Expr::Root(a, k) => {
                let (x, k) = (a.eval(var), k.eval(var));
                if x < 0.0 && k.rem_euclid(2.0) == 1.0 {
                    -(-x).powf(1.0 / k)
                } else {
                    x.powf(1.0 / k)
                }
            }
            Expr::Percent(a) => a.eval(var) / 100.0,
            Expr::Factorial(a) => {
                let n = a.eval(var);
                if n >= 0.0 && n.fract() == 0.0 && n <= 170.0 {
                    (1..=n as u64).map(|i| i as f64).product()
                } else {
                    f64::NAN
                }
            }
            Expr::Tuple(_) => f64::NAN,
        }
    }

    /// The variables the expression mentions.
    pub fn variables(&self) -> BTreeSet<char> {
        let mut out = BTreeSet::new();
        self.collect_variables(&mut out);
        out
    }

    fn collect_variables(&self, out: &mut BTreeSet<char>) {
        match self {
            Expr::Var(c) => {
                out.insert(*c);
            }
            Expr::Number(_) | Expr::Pi => {}
            Expr::Neg(a) | Expr::Percent(a) | Expr::Factorial(a) => a.collect_variables(out),
            Expr::Add(a, b)
            | Expr::Sub(a, b)
            | Expr::Mul(a, b)
            | Expr::Div(a, b)
            | Expr::Pow(a, b)
            | Expr::Root(a, b) => {
                a.collect_variables(out);
                b.collect_variables(out);
            }
            Expr::Tuple(items) => items.iter().for_each(|e| e.collect_variables(out)),
        }
    }

    /// Whether `self` and `other` denote the same value (see the module docs).
    pub fn equals(&self, other: &Expr) -> bool {
        match (self, other) {
            (Expr::Tuple(a), Expr::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.equals(y))
            }
            (Expr::Tuple(_), _) | (_, Expr::Tuple(_)) => false,
            _ => {
                if let (Some(a), Some(b)) = (self.exact(), other.exact()) {
                    return a == b;
                }
                let vars = self.variables();
                if vars != other.variables() {
                    return false;
                }
                (0..5).all(|point| {
                    let value = |c: char| sample_point(point, c, &vars);
                    close(self.eval(&value), other.eval(&value))
                })
            }
        }
    }
}

/// The value given to variable `c` at sample point `point`: distinct, non-special numbers.
fn sample_point(point: usize, c: char, vars: &BTreeSet<char>) -> f64 {
    let index = vars.iter().position(|v| *v == c).unwrap_or(0);
    0.5 + 0.731 * point as f64 + 0.377 * index as f64 + 0.0913 * (point * index) as f64
}

fn close(a: f64, b: f64) -> bool {
    a.is_finite()
        && b.is_finite()
        && (a - b).abs() <= RELATIVE_TOLERANCE * 1f64.max(a.abs()).max(b.abs())
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(String),
    Letter(char),
    Command(String),
    Symbol(char),
}

/// Rewrites LaTeX spellings into the plain forms the tokenizer reads.
fn normalize(text: &str) -> String {
    let mut s = text.trim().to_string();
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\cdot", "*"),
        ("\\times", "*"),
        ("\\div", "/"),
        ("\\%", "%"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\approx", "="),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("°", ""),
        ("×", "*"),
        ("·", "*"),
        ("÷", "/"),
        ("−", "-"),
        ("π", "\\pi"),
        ("$", ""),
        ("~", ""),
    ] {
        s = s.replace(from, to);
    }
    for wrapper in ["\\text", "\\mathrm", "\\textbf", "\\mathbf", "\\mbox"] {
        s = s.replace(wrapper, "");
    }
    let s = s.trim().trim_end_matches('.').trim();
    let bracketed =
        (s.starts_with('(') || s.starts_with('[')) && (s.ends_with(')') || s.ends_with(']'));
    if bracketed {
        s.to_string()
    } else {
        remove_thousands_separators(s)
    }
}

/// `1,000,000` -> `1000000`; a comma stays when it is not followed by exactly three digits.
fn remove_thousands_separators(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        let separator = c == ','
            && i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.len() >= i + 4
            && chars[i + 1..i + 4].iter().all(char::is_ascii_digit)
            && chars.get(i + 4).is_none_or(|c| !c.is_ascii_digit());
        if !separator {
            out.push(c);
        }
    }
    out
}

fn tokenize(s: &str) -> Option<Vec<Token>> {
    let chars: Vec<char> = s.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            if i < chars.len()
                && chars[i] == '.'
                && chars.get(i + 1).is_some_and(char::is_ascii_digit)
            {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            tokens.push(Token::Number(chars[start..i].iter().collect()));
        } else if c == '\\' {
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            if i == start {
                return None;
            }
            tokens.push(Token::Command(chars[start..i].iter().collect()));
        } else if c.is_ascii_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            match word.as_str() {
                "sqrt" | "pi" => tokens.push(Token::Command(word)),
                _ if word.len() == 1 => tokens.push(Token::Letter(c)),
                _ => return None,
            }
        } else if "+-*/^(){}[],=%!".contains(c) {
            tokens.push(Token::Symbol(c));
            i += 1;
        } else {
            return None;
        }
    }
    Some(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Token::Symbol(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// sum := term (('+' | '-') term)*
    fn sum(&mut self) -> Option<Expr> {
        let mut left = self.term()?;
        loop {
            if self.eat('+') {
                left = Expr::Add(Box::new(left), Box::new(self.term()?));
            } else if self.eat('-') {
                left = Expr::Sub(Box::new(left), Box::new(self.term()?));
            } else {
                return Some(left);
            }
        }
    }

    /// term := unary (('*' | '/' | juxtaposition) unary)*
    fn term(&mut self) -> Option<Expr> {
        let mut left = self.unary()?;
        loop {
            if self.eat('*') {
                left = Expr::Mul(Box::new(left), Box::new(self.unary()?));
            } else if self.eat('/') {
                left = Expr::Div(Box::new(left), Box::new(self.unary()?));
            } else if self.starts_primary() {
                left = Expr::Mul(Box::new(left), Box::new(self.power()?));
            } else {
                return Some(left);
            }
        }
    }

    fn starts_primary(&self) -> bool {
        matches!(
            self.peek(),
            Some(Token::Number(_) | Token::Letter(_) | Token::Command(_))
                | Some(Token::Symbol('(' | '{'))
        )
    }

    /// unary := ('-' | '+') unary | power
    fn unary(&mut self) -> Option<Expr> {
        if self.eat('-') {
            Some(Expr::Neg(Box::new(self.unary()?)))
        } else if self.eat('+') {
            self.unary()
        } else {
            self.power()
        }
    }

    /// power := postfix ('^' unary)?
    fn power(&mut self) -> Option<Expr> {
        let base = self.postfix()?;
        if self.eat('^') {
            let exponent = self.unary()?;
            Some(Expr::Pow(Box::new(base), Box::new(exponent)))
        } else {
            Some(base)
        }
    }

    /// postfix := primary ('%' | '!')*
    fn postfix(&mut self) -> Option<Expr> {
        let mut e = self.primary()?;
        loop {
            if self.eat('%') {
                e = Expr::Percent(Box::new(e));
            } else if self.eat('!') {
                e = Expr::Factorial(Box::new(e));
            } else {
                return Some(e);
            }
        }
    }

    fn group(&mut self) -> Option<Expr> {
        self.expect('{')?;
        let e = self.sum()?;
        self.expect('}')?;
        Some(e)
    }

    fn primary(&mut self) -> Option<Expr> {
        match self.next()? {
            Token::Number(digits) => parse_decimal(&digits).map(Expr::Number),
            Token::Letter(c) => Some(Expr::Var(c)),
            Token::Symbol('(') => {
                let first = self.sum()?;
                let mut items = vec![first];
                while self.eat(',') {
                    items.push(self.sum()?);
                }
                self.expect(')')?;
                Some(if items.len() == 1 {
                    items.remove(0)
                } else {
                    Expr::Tuple(items)
                })
            }
            Token::Symbol('{') => {
                let e = self.sum()?;
                self.expect('}')?;
                Some(e)
            }
            Token::Command(name) => match name.as_str() {
                "pi" => Some(Expr::Pi),
                "frac" => {
                    let num = self.group()?;
                    let den = self.group()?;
                    Some(Expr::Div(Box::new(num), Box::new(den)))
                }
                "sqrt" => {
                    let index = if self.eat('[') {
                        let k = self.sum()?;
                        self.expect(']')?;
                        k
                    } else {
                        Expr::Number(Ratio::integer(2))
                    };
                    let radicand = match self.peek() {
                        Some(Token::Symbol('{')) => self.group()?,
                        Some(Token::Symbol('(')) => self.primary()?,
                        _ => return None,
                    };
                    Some(Expr::Root(Box::new(radicand), Box::new(index)))
                }
                _ => None,
            },
            Token::Symbol(_) => None,
        }
    }
}

fn parse_decimal(digits: &str) -> Option<Ratio> {
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let scale = 10i128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    Ratio::new(int.checked_mul(scale)?.checked_add(frac)?, scale)
}

/// Parses one expression (plain or LaTeX, `$` delimiters allowed). For an equation or a chain
/// of them (`x = 3`, `2+2=4`) the last side is the value. Top-level comma lists become tuples.
/// `None` when the text is not a math expression.
pub fn parse(text: &str) -> Option<Expr> {
    let normalized = normalize(text);
    let tokens = tokenize(&normalized)?;
    let last_side = match tokens.iter().rposition(|t| *t == Token::Symbol('=')) {
        Some(eq) => tokens[eq + 1..].to_vec(),
        None => tokens,
    };
    let mut parser = Parser {
        tokens: last_side,
        pos: 0,
    };
    let first = parser.sum()?;
    let mut items = vec![first];
    while parser.eat(',') {
        items.push(parser.sum()?);
    }
    if parser.pos != parser.tokens.len() {
        return None;
    }
    Some(if items.len() == 1 {
        items.remove(0)
    } else {
        Expr::Tuple(items)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(a: &str, b: &str) -> bool {
        parse(a).unwrap().equals(&parse(b).unwrap())
    }

    #[test]
    fn rationals_compare_exactly() {
        assert!(eq("\\frac{3}{4}", "0.75"));
        assert!(eq("1,000", "1000"));
        assert!(eq("-7", "$-7$"));
        assert!(eq("42", "42.0"));
        assert!(!eq("0.3333", "1/3"));
        assert!(eq("2^{10}", "1024"));
        assert!(eq("\\sqrt{16}", "4"));
        assert!(eq("5!", "120"));
    }

    #[test]
    fn irrationals_and_variables_compare_numerically() {
        assert!(eq("2\\sqrt{3}", "\\sqrt{12}"));
        assert!(eq("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"));
        assert!(!eq("\\pi", "3.14159"));
        assert!(eq("x^2+2x+1", "(x+1)^2"));
        assert!(!eq("x^2+1", "(x+1)^2"));
        assert!(!eq("x", "y"));
        assert!(eq("\\sqrt[3]{-8}", "-2"));
    }

    #[test]
    fn tuples_are_ordered_and_equations_give_their_last_side() {
        assert!(!eq("(1,2)", "(2,1)"));
        assert!(eq("(1, 2)", "(1,2.0)"));
        assert!(eq("x = 3", "3"));
        assert!(!eq("(1,2)", "1"));
    }

    #[test]
    fn non_math_text_does_not_parse() {
        for text in ["", "seventy", "70 students", "1 +", "\\foo{1}", "(1,2"] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
