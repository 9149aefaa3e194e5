// Generic Verilator driver for one streaming block (the unit tests of hw/).
//
// The design under test (class Vdut, see tb_*.sv wrappers) has ports clk, rst_n, in_valid,
// in_ready, in_data, out_valid, out_ready, out_data. The driver streams the input records of
// IN_FILE (each IN_WORDS little-endian 32-bit words) into the DUT, with in_valid raised on a cycle
// with probability P_VALID (held until taken, as AXI-Stream requires) and out_ready raised with
// probability P_READY, and writes every output transfer (OUT_WORDS words) to OUT_FILE until
// N_OUT outputs arrived. CYCLES_FILE gets, per line, "in <cycle>" or "out <cycle>" for each
// transfer. Exits 1 when MAX_CYCLES pass first.
//
// usage: sim IN_FILE IN_WORDS OUT_FILE OUT_WORDS N_OUT SEED P_VALID P_READY MAX_CYCLES CYCLES_FILE
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "Vdut.h"
#include "verilated.h"

template <typename T>
static void put(T& port, const uint32_t* w, int n) {
    uint64_t v = w[0];
    if (n > 1) v |= static_cast<uint64_t>(w[1]) << 32;
    port = static_cast<T>(v);
}
template <std::size_t N>
static void put(VlWide<N>& port, const uint32_t* w, int n) {
    for (std::size_t i = 0; i < N; ++i) port[i] = static_cast<int>(i) < n ? w[i] : 0;
}
template <typename T>
static void get(const T& port, uint32_t* w, int n) {
    const uint64_t v = port;
    w[0] = static_cast<uint32_t>(v);
    if (n > 1) w[1] = static_cast<uint32_t>(v >> 32);
    for (int i = 2; i < n; ++i) w[i] = 0;
}
template <std::size_t N>
static void get(const VlWide<N>& port, uint32_t* w, int n) {
    for (int i = 0; i < n; ++i) w[i] = i < static_cast<int>(N) ? port[i] : 0;
}

int main(int argc, char** argv) {
    if (argc != 11) {
        std::fprintf(stderr, "usage: %s IN IN_WORDS OUT OUT_WORDS N_OUT SEED P_VALID P_READY MAX_CYCLES CYCLES\n",
                     argv[0]);
        return 2;
    }
    const int in_words = std::atoi(argv[2]), out_words = std::atoi(argv[4]);
    const long n_out = std::atol(argv[5]);
    std::mt19937 rng(static_cast<unsigned>(std::atol(argv[6])));
    std::bernoulli_distribution want_valid(std::atof(argv[7])), want_ready(std::atof(argv[8]));
    const long max_cycles = std::atol(argv[9]);

    std::vector<uint32_t> in;
    if (FILE* f = std::fopen(argv[1], "rb")) {
        uint32_t w;
        while (std::fread(&w, 4, 1, f) == 1) in.push_back(w);
        std::fclose(f);
    } else {
        std::perror(argv[1]);
        return 2;
    }
    const long n_in = static_cast<long>(in.size()) / in_words;
    std::vector<uint32_t> out(static_cast<size_t>(n_out) * out_words);
    FILE* cyc = std::fopen(argv[10], "w");

    VerilatedContext ctx;
    Vdut dut(&ctx);
    dut.clk = 0;
    dut.rst_n = 0;
    dut.in_valid = 0;
    dut.out_ready = 0;
    for (int i = 0; i < 4; ++i) {
        dut.clk = !dut.clk;
        dut.eval();
    }
    dut.rst_n = 1;

    long next_in = 0, got = 0, cycle = 0;
    bool presenting = false;
    for (; got < n_out && cycle < max_cycles; ++cycle) {
        if (!presenting && next_in < n_in && want_valid(rng)) presenting = true;
        dut.in_valid = presenting;
        if (presenting) put(dut.in_data, &in[static_cast<size_t>(next_in) * in_words], in_words);
        dut.out_ready = want_ready(rng);
        dut.eval();
        const bool in_fire = dut.in_valid && dut.in_ready;
        if (dut.out_valid && dut.out_ready) {
            get(dut.out_data, &out[static_cast<size_t>(got) * out_words], out_words);
            std::fprintf(cyc, "out %ld\n", cycle);
            ++got;
        }
        if (in_fire) std::fprintf(cyc, "in %ld\n", cycle);
        dut.clk = 1;
        dut.eval();
        dut.clk = 0;
        dut.eval();
        if (in_fire) {
            ++next_in;
            presenting = false;
        }
    }
    std::fclose(cyc);
    if (FILE* f = std::fopen(argv[3], "wb")) {
        std::fwrite(out.data(), 4, static_cast<size_t>(got) * out_words, f);
        std::fclose(f);
    }
    if (got < n_out) {
        std::fprintf(stderr, "timeout: %ld of %ld outputs after %ld cycles (%ld inputs taken)\n", got, n_out,
                     cycle, next_in);
        return 1;
    }
    dut.final();
    return 0;
}
