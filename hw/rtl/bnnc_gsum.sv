// Global sum pool: per channel, the sum over the NPIX pixels of a frame.
//
// Bits (EB = 1, bit 1 = -1) count as +-1; integers (EB > 1) are signed. Outputs are signed OB-bit
// integers. The next frame accumulates while the result waits for out_ready; only its last pixel
// waits for the previous result to leave.
`default_nettype none
module bnnc_gsum #(
    parameter int NPIX = 4,
    parameter int C = 1,
    parameter int EB = 1,
    parameter int OB = 4
) (
    input  logic            clk,
    input  logic            rst_n,
    input  logic            in_valid,
    output logic            in_ready,
    input  logic [C*EB-1:0] in_data,
    output logic            out_valid,
    input  logic            out_ready,
    output logic [C*OB-1:0] out_data
);
  localparam int PB = NPIX > 1 ? $clog2(NPIX) : 1;

  logic [PB-1:0] pix;
  logic signed [OB-1:0] acc[C];
  logic signed [OB-1:0] next[C];

  wire last = pix == PB'(NPIX - 1);
  assign in_ready = !(last && out_valid && !out_ready);
  wire push = in_valid && in_ready;

  always_comb begin
    for (int c = 0; c < C; c++) begin
      if (EB == 1) next[c] = in_data[c*EB] ? acc[c] - OB'(1) : acc[c] + OB'(1);
      else next[c] = acc[c] + OB'($signed(in_data[c*EB+:EB]));
    end
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      pix <= '0;
      out_valid <= 1'b0;
      for (int c = 0; c < C; c++) acc[c] <= '0;
    end else begin
      if (out_valid && out_ready) out_valid <= 1'b0;
      if (push) begin
        pix <= last ? '0 : pix + 1'b1;
        for (int c = 0; c < C; c++) acc[c] <= last ? '0 : next[c];
        if (last) out_valid <= 1'b1;
      end
    end
  end

  always_ff @(posedge clk) begin
    if (push && last) begin
      for (int c = 0; c < C; c++) out_data[c*OB+:OB] <= next[c];
    end
  end
endmodule
`default_nettype wire
